"""stdio sessions kept in a ledger: every run is a session of its own, recorded in the local state file.

The stdio server records into the same kind of ledger a hosted server keeps (the default state file, or
`--state-file`), under the principal `--principal` (default: the OS user name). Each run is a session: at
its start the principal's budget is set so that what is left is the session budget (`budget = spent +
reserved + session budget`, recorded as made by `session`), so the session budget applies to what this run
spends and `request_budget_increase` still raises it; the ledger keeps every session's reservations and
events, so `admin history` and `admin report` show what a user's agents spent across sessions.

Reservations record the gateway they were made at. Tasks a run left unfinished are resumed and settled at the
next start against that same gateway; those made at another are listed by `apikey-mcp admin reservations
--open`. Runs with `--sandbox` keep a ledger file of their own and never write into a real gateway's.
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path

from .budget import LedgerStore
from .config import Settings
from .paths import default_state_file
from .policy import Policy

log = logging.getLogger(__name__)
SESSION = "session"  # the actor of a stdio session's budget


def local_principal(settings: Settings) -> str:
    """Whose spending a stdio run records: `--principal`, else the OS user name."""
    if settings.principal:
        return settings.principal
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): still one principal
        return "local"


def state_file(settings: Settings) -> Path:
    """The stdio ledger file: `--state-file` or the default, and a file of its own for sandbox runs."""
    path = Path(settings.state_file or default_state_file())
    return path.with_name(f"sandbox-{path.name}") if settings.sandbox else path


async def start_session(
    store: LedgerStore, principal: str, session_budget: int, policy: Policy, now: float | None = None
) -> None:
    """Open this run's session: what is left for the principal becomes the session budget, and the spending
    policy is what this run's settings say (over stdio the human who starts the server sets both)."""
    totals, created = await store.ensure_principal(principal, session_budget, policy=policy, now=now)
    if not created:  # what the current period has spent: none yet in one begun since the last run
        totals = await store.totals(principal, now=now)
    wanted = totals.spent + totals.reserved + session_budget
    if not created and totals.budget != wanted:
        await store.set_budget(principal, wanted, SESSION)
    if not created and await store.policy(principal) != policy:
        await store.set_policy(principal, policy, SESSION, now=now)
