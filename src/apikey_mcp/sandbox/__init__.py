"""The sandbox gateway: a real HTTP server that follows the API-Key gateway's contract, with made-up prices.

It lets anyone try apikey-mcp with no account, and lets the tests and benchmarks run offline.
"""

from .app import Sandbox
from .engine import FAIL_MARKER
from .errors import SandboxError
from .faults import Faults
from .server import BackgroundServer, PromptServer, SandboxServer
from .wallets import Wallet

__all__ = [
    "FAIL_MARKER",
    "BackgroundServer",
    "Faults",
    "PromptServer",
    "Sandbox",
    "SandboxError",
    "SandboxServer",
    "Wallet",
]
