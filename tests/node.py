"""The npm packages some tests run (third-party clients, validators): `.ci/run` installs them with
`npm ci --prefix tests/hosted/node` before pytest starts, so no test downloads anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "hosted" / "node"


def node_package(relative: str) -> Path:
    """A file inside an installed npm package. Skips only where Node.js is absent; where it is present but
    the package is not installed, the test fails and says how to install it."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    path = NODE_DIR / "node_modules" / relative
    if not path.exists():
        pytest.fail(f"{relative} is not installed: run `npm ci --prefix tests/hosted/node` (as .ci/run does)")
    return path
