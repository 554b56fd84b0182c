"""Bring-your-own-key: a client's own gateway key is used for its calls only, under its principal's budget."""

from __future__ import annotations

import logging

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from apikey_mcp.sandbox import Sandbox
from tests.conftest import KEY, OTHER_KEY
from tests.hosted.conftest import ALICE, BOB, Hosted
from tests.server.conftest import call, call_error, text_of


async def connect_with_key(hosted: Hosted, token: str, own_key: str):
    headers = {"Authorization": f"Bearer {token}", "x-apikey-gateway-key": own_key}
    http = httpx2.AsyncClient(headers=headers, timeout=30)
    return http, Client(streamable_http_client(f"{hosted.url}/mcp", http_client=http))


async def test_an_own_key_pays_from_its_own_wallet_under_the_principals_budget(
    hosted_factory, sandbox: Sandbox, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    hosted = hosted_factory(allow_byok=True)
    http, client = await connect_with_key(hosted, ALICE, OTHER_KEY)
    async with http, client:
        created = await call(client, "generate_image", prompt="mine", model="flux-schnell")
        with anyio.fail_after(10):
            done = await call(client, "poll_task", task_id=created["task_id"], wait_seconds=30)
        texts = [text_of(await client.call_tool("budget_status", {}))]
    async with hosted.connect("streamable-http", ALICE) as plain:
        budget = await call(plain, "budget_status")  # the same principal, without the key: the same budget
        hidden = await call_error(plain, "poll_task", task_id=created["task_id"], wait_seconds=0)
    assert done["status"] == "succeeded"
    assert sandbox.wallets[OTHER_KEY].balance == 10_000 - 2 and sandbox.wallets[KEY].balance == 10_000
    assert budget["spent"] == 2
    assert "task_not_found" in hidden  # the operator's key is never used to look at it
    assert OTHER_KEY not in caplog.text and all(OTHER_KEY not in t for t in texts)


async def test_without_the_operators_consent_the_header_is_ignored(hosted: Hosted, sandbox: Sandbox) -> None:
    http, client = await connect_with_key(hosted, BOB, OTHER_KEY)
    async with http, client:
        created = await call(client, "generate_image", prompt="x", model="flux-schnell")
    assert sandbox.tasks[created["task_id"]].key == KEY  # the operator's key made it
    assert (sandbox.wallets[OTHER_KEY].balance, sandbox.wallets[OTHER_KEY].reserved) == (10_000, 0)


async def test_a_wrong_own_key_is_refused_without_being_echoed(hosted_factory, sandbox: Sandbox) -> None:
    hosted = hosted_factory(allow_byok=True)
    wrong = "sk-own-wrong-7d1e2f"
    http, client = await connect_with_key(hosted, ALICE, wrong)
    async with http, client:
        text = await call_error(client, "generate_image", prompt="x", model="flux-schnell")
        budget = await call(client, "budget_status")
    assert "invalid_api_key" in text and wrong not in text
    assert budget["reserved"] == budget["spent"] == 0 and sandbox.tasks == {}
