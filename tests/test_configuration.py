"""A configuration the server cannot start with: one line naming the setting and what is allowed, exit 2.

Run as a user runs it, a subprocess, since the exit status and the absence of a traceback are the point.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import clean_env, free_port

pytestmark = pytest.mark.slow  # a server process per case


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apikey_mcp", *args],
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--budget", "-5", "--sandbox"], {}, "--budget / APIKEY_SESSION_BUDGET must be at least 0 (got -5)."),
        ([], {"APIKEY_SESSION_BUDGET": "abc"}, "--budget / APIKEY_SESSION_BUDGET must be a whole number (got 'abc')."),
        ([], {"APIKEY_AUTH_SCHEME": "basic"},
         "--auth-scheme / APIKEY_AUTH_SCHEME must be one of 'bearer' or 'x-api-key' (got 'basic')."),
        (["--transport", "http", "--port", "{port}"], {"APIKEY_MCP_AUTH_TOKENS": "alice=short"},
         "APIKEY_MCP_AUTH_TOKENS / APIKEY_MCP_AUTH_TOKENS_FILE: the token for 'alice' is shorter than 16 characters; "
         "each entry is name=token, with a token of 16 or more characters."),
        (["--transport", "http", "--host", "0.0.0.0", "--port", "{port}"], {}, "Refusing to serve on 0.0.0.0"),  # noqa: S104
        (["--sandbox", "--transport", "http", "--host", "0.0.0.0", "--port", "{port}"], {},  # noqa: S104
         "Refusing to serve on 0.0.0.0"),  # the sandbox is not announced before the error: one line
        (["--budget", "lots"], {}, "argument --budget: invalid int value: 'lots'. See apikey-mcp --help."),
        ([], {"APIKEY_SANDBOX": "maybe"}, "--sandbox / APIKEY_SANDBOX must be true or false (got 'maybe')."),
        (["--media-origin", "https://ok.example", "--media-origin", "ftp://x"], {},
         "--media-origin / APIKEY_MEDIA_ORIGINS must be an http(s) URL (got 'ftp://x')."),
        ([], {"APIKEY_ALERT_AT": "120"}, "--alert-at / APIKEY_ALERT_AT must be at most 100 (got '120')."),
        (["--confirm-above", "-5"], {}, "--confirm-above / APIKEY_CONFIRM_ABOVE must be at least 0 (got -5)."),
        (["--transport", "http", "--port", "{port}", "--oauth-issuer", "https://auth.example.com"],
         {"APIKEY_OAUTH_ALGORITHMS": "HS256"},
         "APIKEY_OAUTH_ALGORITHMS: only asymmetric JWT algorithms can be allowed (no 'none', no HS*) (got 'HS256')."),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_status_2(args: list[str], env: dict[str, str], line: str) -> None:
    done = run([a.replace("{port}", str(free_port())) for a in args], env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr and "pydantic" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(f"apikey-mcp: {line}"), done.stderr


@pytest.mark.parametrize("command", [[], ["--transport", "http", "--port", "0"], ["admin", "principals"]])
def test_a_state_file_that_cannot_be_opened_is_one_line_and_exit_status_2(command: list[str], tmp_path) -> None:
    """Regression: a directory (or a place this user may not write) as the state file printed a traceback."""
    done = run([*command, "--state-file", str(tmp_path)], {})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"apikey-mcp{' admin' if 'admin' in command else ''}: The state file {tmp_path} cannot be opened (unable to "
        "open database file): point --state-file at a file this user may create and write."
    ]


def test_a_secret_setting_is_never_echoed() -> None:
    secret = "sk-live-do-not-print-1234567890"
    done = run([], {"APIKEY_API_KEY": secret, "APIKEY_MAX_DOWNLOAD_BYTES": "0"})
    assert done.returncode == 2 and secret not in done.stderr
    expected = "--max-download-bytes / APIKEY_MAX_DOWNLOAD_BYTES must be more than 0 (got '0')."
    assert done.stderr == f"apikey-mcp: {expected}\n"
