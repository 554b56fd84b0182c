"""A PostgreSQL cluster of a test's own, which it may stop, restart and cut off (the suite's shared one may not
be): started with `.ci/postgres start DIR` on a free port, removed at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.conftest import free_port
from tests.provision import missing, postgres_bindir

ROOT = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path:
    found = postgres_bindir()
    if found is None:
        missing("PostgreSQL (its server binaries)", "postgresql")
    assert found is not None
    return found


class Cluster:
    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="apikey-pg-"))
        self.port = free_port()
        self.url = self._ci("start")

    def _ci(self, action: str) -> str:
        env = {**os.environ, "PGPORT_TEST": str(self.port)}
        done = subprocess.run(
            [str(ROOT / ".ci" / "postgres"), action, str(self.dir)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout.strip()

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def restart(self) -> None:
        """A routine restart (every connection is cut; the server is back when this returns)."""
        self._pg_ctl("restart", "-m", "fast", "-w", "-l", str(self.dir / "log"))

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast", "-w")

    def start(self) -> None:
        self._ci("start")

    def terminate_backends(self) -> int:
        """pg_terminate_backend every other connection to the test database; how many."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        return len(rows)

    def close(self) -> None:
        self._ci("stop")
        shutil.rmtree(self.dir, ignore_errors=True)
