"""What the test session brings for itself, so that `python -m pytest` passes on a fresh clone.

Before any test runs, the session (the xdist controller, or the one process without xdist):
- gives the tests a home and data folders of their own, so nothing touches the user's (`HOME`, `XDG_*`);
- lets Python cache bytecode even where `PYTHONDONTWRITEBYTECODE` is set: each xdist worker and each server
  subprocess would otherwise compile every module (and pytest rewrite every test module) from source, several
  seconds of CPU each;
- installs the npm packages of `tests/hosted/node` and `apps/` into their ignored `node_modules` when Node.js is
  there and a lock file changed since the last install;
- starts a throwaway PostgreSQL from the installed server binaries when no `APIKEY_TEST_DATABASE_URL` is
  given (the same script `.ci/postgres` a developer can run by hand), and stops it at the end.
Workers inherit all of it through the environment. A program that is missing makes the tests that need it
skip with one line naming the Debian package; with `CI=true` that skip is a failure, so CI never passes by
not running something.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "hosted" / "node"
APPS_DIR = ROOT / "apps"
NPM_FOLDERS = [NODE_DIR, APPS_DIR]  # the test packages, and the MCP Apps' build tools (the render test bundles)

# program -> the Debian package that brings it
PACKAGES = {
    "node": "nodejs npm",
    "nginx": "nginx-light",
    "initdb": "postgresql",
    "chromium": "chromium",
    "prometheus": "prometheus",
    "promtool": "prometheus",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str, package: str) -> None:
    """Skip the test (fail it in CI), naming what to install."""
    if in_ci():
        pytest.fail(f"{what} is not installed in CI: .ci/run must install it (apt-get install -y {package})")
    pytest.skip(f"{what} is not installed: apt-get install -y {package}")


def find_program(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)


def program(name: str) -> str:
    """The path of an installed program, or a skip (a failure in CI) that names its package."""
    path = find_program(name)
    if path is None:
        missing(name, PACKAGES.get(name, name))
    assert path is not None
    return path


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's binaries (`APIKEY_TEST_PG_BINDIR` overrides the search)."""
    pattern = os.environ.get("APIKEY_TEST_PG_BINDIR") or "/usr/lib/postgresql/*/bin"
    found = sorted(glob.glob(pattern), key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts])
    usable = [Path(p) for p in found if (Path(p) / "initdb").exists()]
    return usable[-1] if usable else None


def isolate_home(base: Path) -> None:
    """A home and XDG folders inside the session's temporary folder; caches keep pointing at the real ones
    (they hold downloads, not user data, and refilling them would cost minutes)."""
    real_home = Path.home()
    os.environ.setdefault("XDG_CACHE_HOME", str(real_home / ".cache"))
    os.environ.setdefault("npm_config_cache", str(real_home / ".npm"))
    home = base / "home"
    for name, sub in [
        ("HOME", ""),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_STATE_HOME", ".local/state"),
    ]:
        folder = home / sub
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)


def npm_packages() -> str | None:
    """`npm ci` in each npm folder whose lock changed since its last install; a line for the report, or None."""
    if shutil.which("npm") is None:
        return None
    installed, failed = [], []
    for folder in NPM_FOLDERS:
        stamp = folder / "node_modules" / ".apikey-lock-sha256"
        digest = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest:
            continue
        command = ["npm", "ci", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            failed.append(f"{folder.relative_to(ROOT)} ({done.stderr.strip()[-300:]})")
            continue
        stamp.write_text(digest)
        installed.append(str(folder.relative_to(ROOT)))
    lines = [f"installed the npm packages of {', '.join(installed)}"] if installed else []
    lines += [f"npm ci failed for {', '.join(failed)}: the tests that need them fail"] if failed else []
    return "; ".join(lines) or None


class Postgres:
    """A throwaway cluster started with `.ci/postgres` (which runs initdb as the postgres user under root)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def start(self) -> str:
        env = os.environ | {"PGPORT_TEST": str(free_port())}
        bindir = postgres_bindir()
        assert bindir is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(ROOT / ".ci" / "postgres"), "start", str(self.folder)],
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not start a throwaway PostgreSQL: {done.stderr.strip()[-500:]}")
        return done.stdout.strip()

    def stop(self) -> None:
        subprocess.run(
            [str(ROOT / ".ci" / "postgres"), "stop", str(self.folder)], capture_output=True, timeout=60, check=False
        )
        shutil.rmtree(self.folder, ignore_errors=True)


class Session:
    """What the controller set up, to report and to undo at the end."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="apikey-tests-"))
        self.postgres: Postgres | None = None
        self.lines: list[str] = []

    def setup(self) -> None:
        isolate_home(self.base)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        sys.dont_write_bytecode = False
        if (line := npm_packages()) is not None:
            self.lines.append(line)
        if not os.environ.get("APIKEY_TEST_DATABASE_URL") and postgres_bindir() is not None:
            folder = self.base / "postgres"
            self.base.chmod(0o755)  # the postgres user (under root) must reach its data folder
            self.postgres = Postgres(folder)
            os.environ["APIKEY_TEST_DATABASE_URL"] = self.postgres.start()
            self.lines.append(f"started a throwaway PostgreSQL for the ledger tests in {folder}")

    def teardown(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
        shutil.rmtree(self.base, ignore_errors=True)
