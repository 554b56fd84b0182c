"""No chat or embeddings call is settled past its hold unless the gateway itself states the charge.

The sandbox always answers an honest usage, so the answers that claim more (a usage of a million tokens, a
stated charge of 50,000) come from a transport that forwards every request to the real sandbox and rewrites
only the chat answer: the reservation, estimate and charge at the gateway are the sandbox's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from apikey_mcp.budget import Event, Ledger
from apikey_mcp.charges import IMAGE_TOKEN_BOUND, chat_input_bound
from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ChatMessage, ChatRequest, EmbeddingRequest
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.sandbox.pricing import count_tokens
from apikey_mcp.service import Service
from apikey_mcp.stores import MemoryLedgerStore
from apikey_mcp.tasks import TaskRegistry
from tests.conftest import KEY
from tests.server.conftest import FAST_POLLING, call, connect, settings_for

Rewrite = Callable[[dict[str, Any]], None]


@asynccontextmanager
async def service_rewriting(server: SandboxServer, path: str, rewrite: Rewrite) -> AsyncIterator[Service]:
    """A service whose gateway is the sandbox, with the JSON answers to `path` changed by `rewrite`."""
    async with httpx2.AsyncClient(base_url=server.url) as upstream:

        async def forward(request: httpx2.Request) -> httpx2.Response:
            answer = await upstream.request(
                request.method,
                request.url.path,
                headers=dict(request.headers),
                content=request.content,
                params=request.url.params,
            )
            if request.url.path != path or answer.status_code != 200:
                return httpx2.Response(answer.status_code, headers=answer.headers, content=answer.content)
            body = answer.json()
            rewrite(body)
            return httpx2.Response(200, json=body)

        async with GatewayClient(server.url, KEY, transport=httpx2.MockTransport(forward)) as client:
            store = MemoryLedgerStore()
            await store.ensure_principal("local", 1000)
            ledger = Ledger(store, "local")
            registry = TaskRegistry(client, ledger, **FAST_POLLING)
            async with registry.running():
                yield Service(settings_for(server), client, ledger, registry)


async def events(service: Service, kind: str) -> list[Event]:
    return [e for e in await service.ledger.store.history("local") if e.kind == kind]


def million_tokens(body: dict[str, Any]) -> None:
    body.pop("credits")  # no stated charge: we price the usage
    body["usage"] = {"prompt_tokens": 1_000_000, "completion_tokens": 5, "total_tokens": 1_000_005}


async def test_a_usage_priced_above_the_hold_is_settled_at_the_hold(sandbox_server: SandboxServer) -> None:
    chat = ChatRequest(model="gpt-4o-mini", messages=[ChatMessage(role="user", content="Hi")], max_tokens=5250)
    async with service_rewriting(sandbox_server, "/v1/chat/completions", million_tokens) as service:
        result = await service.chat(chat)
        (hold,) = await events(service, "reserve")
        totals = await service.ledger.totals()
        assert hold.credits == 22  # what was sent as max_credits
        assert result.credits_charged == 22 and (totals.spent, totals.reserved, totals.remaining) == (22, 0, 978)
        assert await events(service, "overcharge") == []


async def test_embeddings_priced_above_the_hold_are_settled_at_the_hold(sandbox_server: SandboxServer) -> None:
    def huge(body: dict[str, Any]) -> None:
        body.pop("credits")
        body["usage"] = {"prompt_tokens": 5_000_000, "completion_tokens": 0, "total_tokens": 5_000_000}

    async with service_rewriting(sandbox_server, "/v1/embeddings", huge) as service:
        result = await service.embed(EmbeddingRequest(model="embed-small", input=["alpha", "beta"]))
        (hold,) = await events(service, "reserve")
        assert result.credits_charged == hold.credits == (await service.ledger.totals()).spent


async def test_a_stated_charge_above_the_hold_is_recorded_as_an_overcharge(
    sandbox_server: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    def stated(body: dict[str, Any]) -> None:
        body["credits"] = 50_000

    chat = ChatRequest(model="gpt-4o-mini", messages=[ChatMessage(role="user", content="Hi")], max_tokens=5250)
    async with service_rewriting(sandbox_server, "/v1/chat/completions", stated) as service:
        result = await service.chat(chat)
        (hold,) = await events(service, "reserve")
        (settle,) = await events(service, "settle")
        (over,) = await events(service, "overcharge")
        assert result.credits_charged == 50_000 == settle.credits  # the gateway's word is the truth
        assert (await service.ledger.totals()).spent == 50_000
        assert over.seq == settle.seq + 1 and over.credits == 50_000 - hold.credits == 49_978
        assert over.reservation_id == hold.reservation_id and over.detail == "charged 50000 credits on a hold of 22"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "overcharge" in errors[0].getMessage() and "50000" in errors[0].getMessage()
    assert KEY not in caplog.text


async def test_a_200_kb_tool_call_is_covered_by_the_chat_bound(
    transport: str, sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    arguments = json.dumps({"rows": ["x" * 100] * 2000})  # 200 KB of arguments, in tool_calls, not in content
    call_ = {"id": "call_1", "type": "function", "function": {"name": "load", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "Load the rows"},
        {"role": "assistant", "content": None, "tool_calls": [call_]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, session_budget=5000)
    async with connect(transport, settings, store=store) as client:
        await call(client, "chat_completion", model="gpt-4o-mini", messages=messages, max_tokens=10)
    (hold,) = [e for e in await store.history() if e.kind == "reserve"]
    forwarded = count_tokens(json.dumps(call_)) * 4  # the tool call's bytes: more than any tokenizer's count
    assert forwarded > 200_000
    assert hold.credits >= forwarded // 1000  # gpt-4o-mini: 1 credit per 1,000 tokens in
    assert chat_input_bound([ChatMessage.model_validate(m) for m in messages]) > len(json.dumps(call_))


def test_each_image_is_bounded_at_its_most_whatever_its_url() -> None:
    short = ChatMessage(
        role="user",
        content=[
            {"type": "image_url", "image_url": {"url": "https://i.test/a.png"}},
            {"type": "text", "text": "what is this?"},
        ],
    )
    text_only = ChatMessage(role="user", content=[{"type": "text", "text": "what is this?"}])
    assert chat_input_bound([short]) - chat_input_bound([text_only]) == IMAGE_TOKEN_BOUND
    huge = ChatMessage(
        role="user", content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 1_000_000}}]
    )
    assert chat_input_bound([huge]) < 2 * IMAGE_TOKEN_BOUND  # a megabyte of pixels is not a million tokens
