"""Every failure we anticipate, sorted by who must act on it: four roots, each turned into words in one place.

- `AgentError`: the agent should change its call (arguments, spending, model). Tools show its message as is
  (`strict.StrictTool`), so the message says what was wrong and what to do next.
- `ConfigError`: the operator should change a setting, a file or a database. `cli.main` prints it as one line and
  exits with status 2; `admin` prints it as one line too (status 2 when the ledger cannot be opened, 1
  when a command's input is refused).
- `GatewayError` (in `gateway.errors`, which knows nothing above it): the gateway refused, failed or could not be
  reached; it carries the status, code and a hint.
- `LedgerError`: the budget ledger could not do what was asked; the message says what became of the call.

Anything else that escapes is a bug, and is reported as one (a crash, never dressed up as advice).
"""

from __future__ import annotations

from .gateway.errors import GatewayError

__all__ = ["AgentError", "ConfigError", "GatewayError", "LedgerError"]


class AgentError(Exception):
    """A call the agent should change; nothing paid was done. The message is what the agent reads."""

    outcome = "refused_input"  # how `apikey_tool_calls_total{outcome}` counts it


class ConfigError(Exception):
    """A setting, file or database the operator should change; the message is one line that says which and why."""


class LedgerError(Exception):
    """The budget ledger could not complete an operation; the message says what became of the call (nothing,
    mostly; a task already created is named with its id)."""
