"""The paid-call protocol: reserve, send, tie up; and how each failure is sorted.

One question sorts every failure: "may the request have reached the gateway?". Before the create is sent
(the ledger could not record the hold, the caller gave up while reserving), the hold is given back and
nothing is sent. Once it may have been (a timeout, a broken connection, an answer that cannot be decoded
or read, a redirect, a bad number), the hold stays counted, unconfirmed, until the gateway's answer, a poll,
a callback or the operator closes it; the error names the task if one is known. Only the gateway's own
refusal releases it. The create and what follows are shielded from cancellation: a task id is never lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
import httpx2
from pydantic import ValidationError

from . import logs
from .budget import Ledger, LedgerUnavailableError, Reservation
from .errors import LedgerError
from .gateway import (
    GatewayConnectionError,
    GatewayError,
    GatewayProtocolError,
    GatewayUnreachableError,
    ServerError,
)
from .tasks import TaskRegistry

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_A = TypeVar("_A")


class UnconfirmedError(GatewayError):
    """A paid request whose outcome is unknown (timeout, broken connection, unreadable answer)."""


class LedgerRefusedError(LedgerError):
    """The ledger could not record a reservation, so the paid call was not sent."""


class BadAnswerError(GatewayError):
    """A gateway answer with a number no charge can be (infinite, negative, beyond any wallet)."""

    hint = ""


async def paid_call(
    ledger: Ledger,
    registry: TaskRegistry,
    credits: int,
    purpose: str,
    send: Callable[[Reservation], Awaitable[_A]],
    done: Callable[[_A, Reservation], Awaitable[_T]],
    *,
    recover: Callable[[str], _A] | None = None,
    model: str | None = None,
    modality: str | None = None,
) -> _T:
    """Reserve `credits`, `send` with max_credits = the reservation, then `done` ties the reservation up.

    Nothing is sent unless the store recorded the reservation. Once `send` has begun, the reservation is
    released only when the gateway's own answer says it did nothing; any other failure (a timeout, an
    unreadable or undecodable answer, a redirect loop, a bad number) keeps it counted, unconfirmed.
    `recover` rebuilds the answer from a task id found in an unreadable one.
    """
    with anyio.CancelScope(shield=True):  # a hold the store made is never lost to a cancelled caller
        try:
            reservation = await ledger.reserve(credits, purpose, model=model, modality=modality)  # or BudgetExceeded
        except LedgerUnavailableError as exc:
            raise LedgerRefusedError(
                f"The {purpose} was not sent: the budget ledger could not record its reservation ({exc}). "
                "Nothing was created or charged. Try again later, or ask the operator to check the ledger."
            ) from None
    logs.note(reservation_id=reservation.id)
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled while reserving: give it back, send nothing
    except BaseException:
        with anyio.CancelScope(shield=True):
            await registry.durably(f"release the {purpose}", lambda: ledger.release(reservation))
        raise
    with anyio.CancelScope(shield=True):  # a created task id must not be lost to a cancelled call
        try:
            answer = await send(reservation)
        except GatewayError as exc:
            task_id = _task_id_in(exc) if recover is not None else None
            if task_id is None:
                await _unsent_or_unknown(ledger, registry, exc, reservation, purpose)
                raise
            log.warning("unreadable answer to the %s, but it names task %s: tracking it", purpose, task_id)
            assert recover is not None
            answer = recover(task_id)
        except Exception as exc:  # after the request left: undecodable body, redirect loop, a bad number
            raise _unconfirmed(purpose, reservation, _describe(exc), None) from exc
        try:
            result = await done(answer, reservation)
        except Exception as exc:
            task_id = getattr(answer, "task_id", None)
            raise _unconfirmed(purpose, reservation, _describe(exc), task_id) from exc
    return result


async def _unsent_or_unknown(
    ledger: Ledger, registry: TaskRegistry, exc: GatewayError, reservation: Reservation, purpose: str
) -> None:
    """Release the reservation of a request the gateway refused; keep it when the outcome is unknown."""
    if not _may_have_happened(exc):
        await registry.durably(f"release the {purpose}", lambda: ledger.release(reservation))
        return
    raise _unconfirmed(purpose, reservation, exc.message, None) from exc


def _unconfirmed(purpose: str, reservation: Reservation, why: str, task_id: str | None) -> UnconfirmedError:
    """The error for a paid request that may have reached the gateway: its credits stay counted."""
    task = f" It was answered with task {task_id}: poll_task shows its state." if task_id else ""
    return UnconfirmedError(
        f"The gateway did not confirm the {purpose} ({why}). It may have been created, so its "
        f"{reservation.credits} credits stay reserved until that is known.{task}",
        hint="Check the api-key.org dashboard before trying again; budget_status shows the reservation, and "
        "the operator can close it (apikey-mcp admin close).",
    )


def _describe(exc: Exception) -> str:
    """A short, key-free account of an exception from a gateway answer."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"unreadable answer: {where + ': ' if where else ''}{first['msg']}"
    if isinstance(exc, httpx2.DecodingError):
        return "the answer's body could not be decoded"
    if isinstance(exc, httpx2.TooManyRedirects):
        return "the answer redirected too many times"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _may_have_happened(exc: GatewayError) -> bool:
    """Whether the gateway may have acted on a paid request that failed: after a timeout, a broken
    connection or an unreadable answer, a 5xx that is not the gateway's own refusal (a proxy's 502/504), or
    an answer that is neither success nor refusal (a redirect). A 4xx is the gateway saying it did nothing."""
    if isinstance(exc, GatewayUnreachableError):
        return False
    if isinstance(exc, GatewayProtocolError | GatewayConnectionError):
        return True
    if isinstance(exc, ServerError):
        return exc.status in (502, 504) or exc.code is None
    status = getattr(exc, "status", None)
    return status is not None and not 400 <= status < 500  # a redirect or an unknown status: not a refusal


def _task_id_in(exc: GatewayError) -> str | None:
    """The task id in a 2xx answer we could not otherwise read, so that the task is still tracked."""
    if not isinstance(exc, GatewayProtocolError) or not exc.body:
        return None
    try:
        task_id = json.loads(exc.body).get("task_id")
    except (ValueError, AttributeError):
        return None
    return task_id if isinstance(task_id, str) and task_id else None
