"""Cheap, quiet refusals: token guessing is throttled per address, a foreign Host is answered like any refusal,
and the start log says what is served and whether anyone can use it."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest

from apikey_mcp.sandbox import SandboxServer
from tests.harness import Processes
from tests.hosted.conftest import ALICE, INIT, Hosted, post_initialize, start_process


async def test_guessing_tokens_is_throttled_per_address(hosted_factory) -> None:
    hosted: Hosted = hosted_factory(auth_failures_per_minute=3)
    discovery = [await post_initialize(f"{hosted.url}/mcp", None) for _ in range(5)]  # no token: not a guess
    guesses = [await post_initialize(f"{hosted.url}/mcp", f"guess-{i}-0123456789abcdef") for i in range(4)]
    async with httpx2.AsyncClient(timeout=10) as http:
        sse = await http.get(f"{hosted.url}/sse", headers={"Authorization": "Bearer another-guess-0123456789"})
        health = await http.get(f"{hosted.url}/healthz")
    assert [d.status_code for d in discovery] == [401] * 5
    assert [g.status_code for g in guesses] == [401, 401, 401, 429]
    assert sse.status_code == 429 and guesses[-1].json()["error"] == "too_many_requests"
    assert 1 <= int(guesses[-1].headers["retry-after"]) <= 60
    assert health.status_code == 200


async def test_junk_tokens_never_lock_a_valid_token_out_of_the_same_address(hosted_factory) -> None:
    hosted: Hosted = hosted_factory()  # the default: 20 failures a minute
    junk = [await post_initialize(f"{hosted.url}/mcp", f"junk-{i}-0123456789abcdef") for i in range(21)]
    valid = await post_initialize(f"{hosted.url}/mcp", ALICE)
    more_junk = await post_initialize(f"{hosted.url}/mcp", "junk-again-0123456789abcdef")
    assert [j.status_code for j in junk] == [401] * 20 + [429]
    assert valid.status_code == 200 and valid.headers["mcp-session-id"]
    assert more_junk.status_code == 429


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


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_apart(
    sandbox_server: SandboxServer, tmp_path: Path, processes: Processes, trusted: bool
) -> None:
    """The real server process, as `serve` configures uvicorn: with --forwarded-allow-ips naming the proxy
    (this test, on 127.0.0.1), X-Forwarded-For names the client; without it, the header is no one's word."""
    env = {"APIKEY_AUTH_FAILURES_PER_MINUTE": "3"} | ({"APIKEY_FORWARDED_ALLOW_IPS": "127.0.0.1"} if trusted else {})
    server = start_process(processes, sandbox_server, tmp_path / "state.sqlite3", tmp_path / "server.log", **env)
    await server.wait_ready(seconds=30)
    url = f"{server.url}/mcp"

    async def attempt(client: str, token: str) -> int:
        async with httpx2.AsyncClient(timeout=10) as http:
            headers = {
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {token}",
                "X-Forwarded-For": client,
            }
            return (await http.post(url, headers=headers, json=INIT)).status_code

    first = [await attempt("203.0.113.7", f"junk-{i}-0123456789abcdef") for i in range(4)]
    second = await attempt("198.51.100.9", "junk-other-0123456789abcdef")
    valid = await attempt("203.0.113.7", ALICE)
    assert first == [401, 401, 401, 429] and valid == 200
    assert second == (401 if trusted else 429)  # untrusted: both are the proxy's one address
    if trusted:
        assert "3 failed authentications from 203.0.113.7" in server.log.read_text()
