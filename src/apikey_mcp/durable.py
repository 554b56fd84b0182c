"""Ledger writes that must land: tried now, then retried in the background until the store takes them.

A reservation stays counted while its close waits, so the budget errs on the safe side. Retries double from
RETRY_FIRST_SECONDS to RETRY_CAP_SECONDS: a write that came due during a database outage lands within a few
seconds of the database's return.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from . import metrics
from .budget import LedgerUnavailableError

log = logging.getLogger(__name__)
RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS = 0.25, 2.0
Write = Callable[[], Awaitable[object]]


async def durably(what: str, write: Write, spawn: Callable[..., Any]) -> None:
    """Write now; if the store cannot take it, `spawn` a retry (a supervised job) that runs until it lands."""
    try:
        await write()
        return
    except LedgerUnavailableError as exc:
        log.error("could not %s (%s); retrying until the ledger takes it", what, exc)
    spawn(retry, what, write, name=f"retry: {what}")


async def retry(what: str, write: Write) -> None:
    delay = RETRY_FIRST_SECONDS
    while True:
        await anyio.sleep(delay)
        try:
            await write()
        except LedgerUnavailableError:
            metrics.background_error("ledger_retry")
            delay = min(delay * 2, RETRY_CAP_SECONDS)
            continue
        log.info("the ledger took it at last: %s", what)
        return
