"""Signed callbacks: the sandbox signs real POSTs to a receiver on loopback; verify() trusts only good ones."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apikey_mcp.gateway import GatewayClient, webhooks
from apikey_mcp.gateway.models import VideoRequest
from apikey_mcp.sandbox import FAIL_MARKER, BackgroundServer, Sandbox, SandboxServer
from tests.conftest import KEY, wait_until

SECRET = "whsec_test_5a1e"


@pytest.fixture
def received() -> list[tuple[dict[str, str], bytes]]:
    return []


@pytest.fixture
def receiver(received):
    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    with BackgroundServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as server:
        yield f"{server.url}/hook"


async def test_terminal_events_are_posted_signed(receiver: str, received) -> None:
    with SandboxServer(Sandbox([KEY], task_seconds=0.05, webhook_secret=SECRET)) as server:
        async with GatewayClient(server.url, KEY) as client:
            ok = await client.generate_video(VideoRequest(model="seedance-2", prompt="a", callback_url=receiver))
            bad = await client.generate_video(
                VideoRequest(model="seedance-2", prompt=f"b {FAIL_MARKER}", callback_url=receiver)
            )
            await wait_until(lambda: len(received) == 2)
    events = {headers[webhooks.TASK_ID_HEADER]: (headers, body) for headers, body in received}
    for task_id, event, status in [
        (ok.task_id, webhooks.EVENT_COMPLETED, "succeeded"),
        (bad.task_id, webhooks.EVENT_FAILED, "failed"),
    ]:
        headers, body = events[task_id]
        assert headers[webhooks.EVENT_HEADER] == event
        assert webhooks.verify(SECRET, headers, body) == int(headers[webhooks.TIMESTAMP_HEADER])
        payload = json.loads(body)
        assert payload["task_id"] == task_id and payload["status"] == status


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    # Computed independently: printf '1780666146.{"a":1}' | openssl dgst -sha256 -hmac whsec_test_5a1e
    expected = "71b64226f6389c9b7db692a42be7e5bb46dc0bde47f2697a9785127a8a25178c"
    assert webhooks.sign(SECRET, 1780666146, b'{"a":1}') == expected


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda h, b: (h, b + b" "), "does not match"),
        (lambda h, b: (h, b.replace(b"succeeded", b"failed")), "does not match"),
        (lambda h, b: ({**h, webhooks.SIGNATURE_HEADER: "0" * 64}, b), "does not match"),
        (lambda h, b: ({**h, webhooks.SIGNATURE_HEADER: "é" * 64}, b), "does not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != webhooks.SIGNATURE_HEADER}, b), "missing"),
        (lambda h, b: ({**h, webhooks.TIMESTAMP_HEADER: "soon"}, b), "whole number"),
        (lambda h, b: ({**h, webhooks.TIMESTAMP_HEADER: str(int(h[webhooks.TIMESTAMP_HEADER]) + 1)}, b), "match"),
    ],
)
def test_tampered_or_forged_callbacks_are_rejected(tamper, reason) -> None:
    body = b'{"task_id":"task_1","status":"succeeded"}'
    headers = webhooks.signed_headers(SECRET, webhooks.EVENT_COMPLETED, "task_1", body)
    webhooks.verify(SECRET, headers, body)  # the untouched event is trusted
    bad_headers, bad_body = tamper(headers, body)
    with pytest.raises(webhooks.SignatureError, match=reason):
        webhooks.verify(SECRET, bad_headers, bad_body)


def test_wrong_secret_is_rejected() -> None:
    body = b"{}"
    headers = webhooks.signed_headers("whsec_other", webhooks.EVENT_COMPLETED, "task_1", body)
    with pytest.raises(webhooks.SignatureError):
        webhooks.verify(SECRET, headers, body)


@pytest.mark.parametrize(("age", "trusted"), [(0, True), (299, True), (-299, True), (301, False), (-301, False)])
def test_timestamps_older_or_newer_than_five_minutes_are_stale(age: int, trusted: bool) -> None:
    body = b"{}"
    headers = webhooks.signed_headers(SECRET, webhooks.EVENT_COMPLETED, "task_1", body, now=1_780_000_000)
    if trusted:
        webhooks.verify(SECRET, headers, body, now=1_780_000_000 + age)
    else:
        with pytest.raises(webhooks.SignatureError, match="from now"):
            webhooks.verify(SECRET, headers, body, now=1_780_000_000 + age)
