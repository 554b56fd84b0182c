"""What every store shares: the refusal to open a store that is not ours."""

from __future__ import annotations


class StoreRefusedError(Exception):
    """The configured store cannot be used as the ledger (empty, foreign, unreachable); the message says why."""
