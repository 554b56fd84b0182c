"""The process harness the tests and bench/ share (tests/harness.py): what it promises beyond starting a server,
which every process test shows already: no APIKEY_* of the caller's, failures that show the server's log, and a
stop that does not hang on a server that ignores its signal."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.harness import ProcessError, Processes, ServerProcess, clean_env, free_port


def test_the_environment_has_none_of_the_callers_apikey_settings_and_the_given_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APIKEY_API_KEY", "sk-developers-own-key")
    monkeypatch.setenv("APIKEY_DATABASE_URL", "postgresql://elsewhere/prod")
    monkeypatch.setenv("HARNESS_TEST_OTHER", "kept")
    env = clean_env({"APIKEY_BASE_URL": "http://127.0.0.1:1"}, APIKEY_LOG_LEVEL="WARNING")
    assert sorted(name for name in env if name.startswith("APIKEY_")) == ["APIKEY_BASE_URL", "APIKEY_LOG_LEVEL"]
    assert env["HARNESS_TEST_OTHER"] == "kept" and env["APIKEY_BASE_URL"] == "http://127.0.0.1:1"


@pytest.mark.slow
async def test_a_server_that_exits_before_it_is_ready_fails_at_once_with_its_log(tmp_path: Path) -> None:
    said = "cannot listen: the port is taken"
    command = [sys.executable, "-c", f"import sys; print({said!r}, file=sys.stderr); sys.exit(3)"]
    server = ServerProcess("doomed", command, port=free_port(), log=tmp_path / "doomed.log")
    with pytest.raises(ProcessError) as failed:
        await server.wait_ready(seconds=60)  # fails when the process exits, long before the deadline
    assert "doomed" in str(failed.value) and "exited with code 3" in str(failed.value)
    assert said in str(failed.value)


@pytest.mark.slow
async def test_a_server_that_ignores_its_signal_is_killed_and_every_server_is_stopped_at_the_end(
    tmp_path: Path,
) -> None:
    stubborn = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); signal.pause()"
    with Processes(tmp_path) as processes:
        ignoring = processes.start("stubborn", [sys.executable, "-c", stubborn], port=free_port())
        left = processes.start(
            "left running", [sys.executable, "-c", "import signal; signal.pause()"], port=free_port()
        )
        await wait_until(lambda: "up" in ignoring.log.read_text())  # its handler is in place
        assert processes.stop(ignoring, signal.SIGTERM, grace=0.5) == -signal.SIGKILL
        assert left.running
    assert not left.running and processes.running == []
