"""Secrets in text relayed from the gateway: a gateway (or proxy) that echoes the request's Authorization header
into model descriptions, documents, task errors and chat replies leaks the key nowhere."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp.types import TextResourceContents
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apikey_mcp.sandbox import FAIL_MARKER, BackgroundServer, Sandbox
from tests.conftest import KEY
from tests.server.conftest import call, call_error, connect, settings_for

ECHOED = ("description", "name", "message", "content")


class EchoAuth:
    """Appends the request's Authorization header to every description, name, message and content of a JSON
    answer, and to every text document."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope["headers"]).get(b"authorization", b"").decode()
        start: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, capture)
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        kind = dict(headers).get(b"content-type", b"").decode()
        echoed = bytes(body)
        if sent and "json" in kind:
            echoed = json.dumps(_echo(json.loads(body), sent)).encode()
        elif sent and kind.startswith("text/"):
            echoed = body + f"\nyou sent: {sent}\n".encode()
        headers.append((b"content-length", str(len(echoed)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": echoed})


def _echo(value: Any, sent: str) -> Any:
    if isinstance(value, dict):
        return {
            k: f"{v} (you sent {sent})" if k in ECHOED and isinstance(v, str) else _echo(v, sent)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_echo(item, sent) for item in value]
    return value


@pytest.fixture
def echoing() -> Iterator[BackgroundServer]:
    with BackgroundServer(EchoAuth(Sandbox([KEY], credits=10_000, task_seconds=0.05, seed=7).app)) as server:
        yield server


def texts_of(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else value


async def test_an_echoed_key_reaches_no_result_resource_log_or_notification(echoing: BackgroundServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    async def on_message(message: Any) -> None:
        seen.append(repr(message))

    async def on_log(params: Any) -> None:
        seen.append(repr(params))

    settings = settings_for(echoing, webhook_secret="whsec-test-secret-0123456789")  # type: ignore[arg-type]
    async with connect("memory", settings, message_handler=on_message, logging_callback=on_log) as client:
        models = await call(client, "list_models")
        seen.append(texts_of(models))
        seen.append(texts_of(await call(client, "estimate", model="flux-schnell")))
        seen.append(texts_of(await call(client, "chat_completion", model="gpt-4o-mini", prompt="hello")))
        for prompt in ("a cat", f"a dog {FAIL_MARKER}"):
            created = await call(client, "generate_image", prompt=prompt, model="flux-schnell")
            with anyio.fail_after(20):
                while (done := await call(client, "poll_task", task_id=created["task_id"], wait_seconds=10))[
                    "status"
                ] not in ("succeeded", "failed"):
                    pass
            seen.append(texts_of(done))
        seen.append(await call_error(client, "poll_task", task_id="task_missing", wait_seconds=0))
        for resource in (await client.list_resources()).resources:
            for content in (await client.read_resource(str(resource.uri))).contents:
                assert isinstance(content, TextResourceContents)
                seen.append(content.text)
    seen.append(caplog.text)
    everything = "\n".join(seen)
    assert "(you sent Bearer [redacted]" in texts_of(models)  # the gateway did echo it, and it was removed
    assert "you sent: Bearer [redacted]" in everything  # documents too
    assert done["status"] == "failed" and "[redacted]" in (done["error"] or "")
    assert KEY not in everything


def test_every_secret_setting_is_redacted_including_ones_added_later() -> None:
    """Settings.secrets() is what redaction removes: every SecretStr setting is in it, each client token apart."""
    from pydantic import SecretStr

    from apikey_mcp.config import Settings
    from apikey_mcp.gateway.keys import redactor

    secret_fields = [n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)]
    assert {"api_key", "webhook_secret", "auth_tokens", "request_state_key", "database_url"} <= set(secret_fields)
    values = {name: f"value-of-{name}-0123456789abcdef" for name in secret_fields}
    values |= {
        "auth_tokens": "alice=alice-token-0123456789,bob=bob-token-0123456789",
        "database_url": "postgresql://apikey:db-password-0123@db.internal/apikey",
    }
    settings = Settings(**values)
    text = " / ".join([*values.values(), "alice-token-0123456789", "db-password-0123", "Bearer KEY"])
    cleaned = redactor(settings.secrets())(text)
    for secret in [*values.values(), "alice-token-0123456789", "bob-token-0123456789", "db-password-0123"]:
        assert secret not in cleaned
    assert cleaned.endswith("Bearer KEY") and isinstance(settings.secrets()[0], SecretStr)
