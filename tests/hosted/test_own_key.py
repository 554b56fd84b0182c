"""Bring-your-own-key: a client's own gateway key is used for its calls only, under its principal's budget."""

from __future__ import annotations

import logging

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from apikey_mcp.own_keys import KEY_CHECKS_PER_MINUTE, MAX_OWN_KEYS
from apikey_mcp.sandbox import Sandbox, Wallet
from tests.conftest import KEY, OTHER_KEY
from tests.hosted.conftest import ALICE, BOB, Hosted
from tests.server.conftest import call, call_error, text_of

TASK_GETS = "GET /v1/tasks/{task_id}"


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


async def test_a_wrong_own_key_is_refused_before_it_takes_a_slot(hosted_factory, sandbox: Sandbox) -> None:
    hosted = hosted_factory(allow_byok=True)
    wrong = "sk-own-wrong-7d1e2f"
    http, client = await connect_with_key(hosted, ALICE, wrong)
    with pytest.raises(BaseException) as raised:
        async with http, client:
            pass
    refused = _first(raised.value, MCPError)
    checks = sandbox.requests[TASK_GETS]
    http, client = await connect_with_key(hosted, ALICE, wrong)
    with pytest.raises(BaseException) as again:
        async with http, client:
            pass
    assert "refused the key" in str(refused) and "invalid_api_key" in str(refused)
    assert wrong not in str(refused) and sandbox.tasks == {}
    assert not hosted.accounts.own_keys.slots  # no slot taken
    assert str(_first(again.value, MCPError)) == str(refused) and sandbox.requests[TASK_GETS] == checks == 1


def _first(error: BaseException, kind: type[Exception]) -> Exception:
    """The first `kind` in an exception (group), however deeply nested."""
    if isinstance(error, kind):
        return error
    for inner in getattr(error, "exceptions", ()):
        try:
            return _first(inner, kind)
        except LookupError:
            continue
    raise LookupError(f"no {kind.__name__} in {error!r}")


async def test_own_key_slots_are_recycled_least_recently_used(hosted_factory, sandbox: Sandbox) -> None:
    keys = [f"sk-sandbox-own-{i}-5b7e9c2a" for i in range(MAX_OWN_KEYS + 1)]
    for key in keys:
        sandbox.wallets[key] = Wallet(100)
    hosted = hosted_factory(allow_byok=True)

    async def use(key: str) -> int:
        """Calls with `key`; how many key checks the gateway has seen so far."""
        http, client = await connect_with_key(hosted, ALICE, key)
        async with http, client:
            await call(client, "budget_status")
        return sandbox.requests[TASK_GETS]

    for key in keys[:MAX_OWN_KEYS]:
        await use(key)
    assert await use(keys[0]) == MAX_OWN_KEYS  # held: not checked again, and now the most recently used
    assert await use(keys[MAX_OWN_KEYS]) == MAX_OWN_KEYS + 1  # a new key: checked, takes keys[1]'s slot
    assert await use(keys[0]) == MAX_OWN_KEYS + 1  # still held
    assert await use(keys[1]) == MAX_OWN_KEYS + 2  # let go of, so checked again
    assert len(hosted.accounts.own_keys.slots) == MAX_OWN_KEYS


async def test_unseen_own_keys_are_checked_at_most_ten_a_minute_per_principal(hosted_factory, sandbox: Sandbox) -> None:
    hosted = hosted_factory(allow_byok=True)
    now = [1000.0]
    hosted.accounts.own_keys.key_checks.clock = lambda: now[0]  # the limit's minute belongs to the test

    async def refusal(token: str, key: str) -> str:
        http, client = await connect_with_key(hosted, token, key)
        with pytest.raises(BaseException) as raised:
            async with http, client:
                pass
        return str(_first(raised.value, MCPError))

    first = [await refusal(ALICE, f"sk-junk-{i}-0a1b2c3d") for i in range(KEY_CHECKS_PER_MINUTE)]
    limited = await refusal(ALICE, "sk-junk-eleventh-0a1b2c3d")
    assert all("refused the key" in r for r in first) and "Too many new own gateway keys" in limited
    assert "try again in 60 s" in limited and sandbox.requests[TASK_GETS] == KEY_CHECKS_PER_MINUTE  # not asked
    assert "refused the key" in await refusal(BOB, "sk-junk-bob-0a1b2c3d")  # another principal is not limited
    now[0] += 60.5
    assert "refused the key" in await refusal(ALICE, "sk-junk-later-0a1b2c3d")  # a minute on: checked again
    assert sandbox.requests[TASK_GETS] == KEY_CHECKS_PER_MINUTE + 2
