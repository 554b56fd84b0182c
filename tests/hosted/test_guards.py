"""Cheap, quiet refusals: token guessing is throttled per address, a foreign Host is answered like any refusal,
and the start log says what is served and whether anyone can use it."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import anyio
import httpx2

from tests.hosted.conftest import ALICE, Hosted, post_initialize


async def test_guessing_tokens_is_throttled_per_address(hosted_factory) -> None:
    hosted: Hosted = hosted_factory(auth_failures_per_minute=3)
    discovery = [await post_initialize(f"{hosted.url}/mcp", None) for _ in range(5)]  # no token: not a guess
    guesses = [await post_initialize(f"{hosted.url}/mcp", f"guess-{i}-0123456789abcdef") for i in range(4)]
    right_one = await post_initialize(f"{hosted.url}/mcp", ALICE)  # a right guess now tells nothing either
    async with httpx2.AsyncClient(timeout=10) as http:
        sse = await http.get(f"{hosted.url}/sse", headers={"Authorization": "Bearer another-guess-0123456789"})
        health = await http.get(f"{hosted.url}/healthz")
    assert [d.status_code for d in discovery] == [401] * 5
    assert [g.status_code for g in guesses] == [401, 401, 401, 429]
    assert right_one.status_code == sse.status_code == 429
    assert 1 <= int(guesses[-1].headers["retry-after"]) <= 60
    assert health.status_code == 200


def _exchange(url: str, requests: list[bytes]) -> list[bytes]:
    """Each request in turn on one TCP connection; each answer's status line (b"" if the connection closed)."""
    parts = urlsplit(url)
    lines = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock, sock.makefile("rb") as answers:
        for request in requests:
            sock.sendall(request)
            status = answers.readline()
            lines.append(status.strip())
            length = 0
            while (header := answers.readline()).strip():
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            answers.read(length)
    return lines


async def test_a_foreign_host_on_sse_is_refused_quietly_and_keeps_the_connection(hosted: Hosted, caplog) -> None:
    caplog.set_level(logging.INFO)
    bad = f"GET /sse HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {ALICE}\r\n\r\n".encode()
    host = urlsplit(hosted.url).netloc
    good = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    statuses = await anyio.to_thread.run_sync(_exchange, hosted.url, [bad, good])
    assert statuses == [b"HTTP/1.1 421 Misdirected Request", b"HTTP/1.1 200 OK"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR] and "Traceback" not in caplog.text


async def test_the_start_log_names_the_endpoints_and_warns_without_authentication(hosted_factory, caplog) -> None:
    caplog.set_level(logging.INFO)
    hosted_factory()
    with_tokens = caplog.text
    caplog.clear()
    hosted_factory(auth_tokens=None)
    without = caplog.text
    assert "/mcp (operator tokens)" in with_tokens and "/sse (operator tokens)" in with_tokens
    assert "NO client authentication" not in with_tokens
    assert "/mcp (NO authentication)" in without and "serving with NO client authentication" in without
