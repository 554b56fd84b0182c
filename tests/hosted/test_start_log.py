"""The hosted server's start log says where it listens (the address it bound), apart from its public URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # a server process


async def test_the_start_log_names_the_bound_address_not_the_public_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")} | {
        "APIKEY_WEBHOOK_SECRET": "whsec-0123456789abcdef",
        "APIKEY_STATE_FILE": str(tmp_path / "state.sqlite3"),
        "APIKEY_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "server.log"
    public = "https://mcp.example.com"
    command = [sys.executable, "-m", "apikey_mcp", "--transport", "streamable-http", "--port", "0", "--public-url"]
    with log.open("wb") as out:
        server = await anyio.open_process(
            [*command, public], env=env, stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL
        )
    try:
        await wait_until(
            lambda: "serving streamable-http" in log.read_text() or server.returncode is not None, seconds=60
        )
    finally:
        server.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await server.wait()
    started = next(line for line in log.read_text().splitlines() if "serving streamable-http" in line)
    assert "listening on 127.0.0.1:" in started and f"(public URL {public})" in started, started
    port = int(started.split("listening on 127.0.0.1:", 1)[1].split(" ", 1)[0])
    assert port > 0  # the port it bound, although it was asked for any (0)
