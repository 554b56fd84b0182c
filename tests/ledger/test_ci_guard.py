"""The PostgreSQL tests never silently skip in CI: without a database there, they fail and say why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_contract(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")} | {"CI": ci}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "postgres and refused_whole",
               "tests/ledger/test_contract.py"]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_without_a_database_the_postgres_tests_fail_in_ci_and_skip_elsewhere() -> None:
    in_ci, by_hand = run_contract("true"), run_contract("")
    assert in_ci.returncode == 1 and "APIKEY_TEST_DATABASE_URL is not set in CI" in in_ci.stdout
    assert by_hand.returncode == 0 and "1 skipped" in by_hand.stdout
