"""The npm packages some tests run (third-party clients, validators, the browser driver): the test session
installs them into `tests/hosted/node/node_modules` when Node.js is there (tests/provision.py), so no test
downloads anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.provision import NODE_DIR, program

__all__ = ["NODE_DIR", "node_package"]


def node_package(relative: str) -> Path:
    """A file inside an installed npm package. Skips (fails in CI) where Node.js is absent; where it is present
    but the package is not installed (the session's `npm ci` failed), the test fails and says so."""
    program("node")
    path = NODE_DIR / "node_modules" / relative
    if not path.exists():
        pytest.fail(f"{relative} is not installed: the session's `npm ci --prefix tests/hosted/node` failed")
    return path
