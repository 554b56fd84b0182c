"""`apikey-mcp --sandbox` typed in a terminal says what it is, how to try it and how to stop it, on stderr;
run by a client (stdin a pipe), it says nothing of the kind. stdout stays the protocol's either way."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import anyio
import pytest

pytestmark = pytest.mark.slow  # a server process in a pseudo-terminal

HINT = "This is the MCP server over stdio"


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")}


async def test_in_a_terminal_the_server_says_what_it_is_and_how_to_stop_it() -> None:
    terminal, stdin = pty.openpty()
    try:
        async with await anyio.open_process(
            [sys.executable, "-m", "apikey_mcp", "--sandbox"],
            env=environment(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdout and process.stderr
            stderr = b""
            try:
                with anyio.fail_after(30):
                    while b"Ctrl-D" not in stderr:
                        stderr += await process.stderr.receive()
                    os.write(terminal, b"\x04")  # Ctrl-D: end of input, as the hint says
                    await process.wait()
                    stdout = b"".join([chunk async for chunk in process.stdout])
            finally:
                if process.returncode is None:  # it kept waiting on the terminal: the test failed, end it
                    process.kill()
    finally:
        os.close(terminal)
        os.close(stdin)
    text = stderr.decode()
    assert HINT in text and "npx -y @modelcontextprotocol/inspector apikey-mcp --sandbox" in text
    assert "Ctrl-C" in text and process.returncode == 0
    assert stdout == b""  # nothing but the protocol, and there was none


def test_run_by_a_client_through_a_pipe_there_is_no_hint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apikey_mcp", "--sandbox"],
        env=environment(),
        input=b"",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and b"serving MCP over stdio" in done.stderr
    assert HINT.encode() not in done.stderr and done.stdout == b""
