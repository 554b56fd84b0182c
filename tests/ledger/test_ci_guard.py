"""The PostgreSQL tests never silently skip in CI: without a server to start there, they fail and say why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import clean_env

pytestmark = pytest.mark.slow  # pytest runs itself twice

ROOT = Path(__file__).resolve().parents[2]


def run_contract(ci: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The contract test in a pytest of its own, on a machine without PostgreSQL's binaries or a database URL."""
    env = clean_env(CI=ci, APIKEY_TEST_PG_BINDIR=str(tmp_path / "no-postgresql"))
    flags = ["-q", "-n0", "-p", "no:cacheprovider", "-k", "postgres and refused_whole"]
    command = [sys.executable, "-m", "pytest", *flags, "tests/ledger/test_contract.py"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_without_postgresql_the_postgres_tests_fail_in_ci_and_skip_elsewhere(tmp_path: Path) -> None:
    in_ci, by_hand = run_contract("true", tmp_path), run_contract("", tmp_path)
    assert in_ci.returncode == 1, in_ci.stdout
    assert "is not installed in CI: .ci/run must install it (apt-get install -y postgresql)" in in_ci.stdout
    assert by_hand.returncode == 0 and "1 skipped" in by_hand.stdout, by_hand.stdout
