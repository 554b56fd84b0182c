"""The sandbox gateway: a real HTTP server that follows the API-Key gateway's contract, with made-up prices.

It lets anyone try apikey-mcp with no account, and lets the tests and benchmarks run offline.
"""

from .app import FAIL_MARKER, Sandbox, Wallet
from .errors import SandboxError
from .faults import Faults
from .server import BackgroundServer, SandboxServer

__all__ = ["FAIL_MARKER", "BackgroundServer", "Faults", "Sandbox", "SandboxError", "SandboxServer", "Wallet"]
