"""The receiver of the gateway's signed task callbacks (POST /webhooks/api-key).

A callback is trusted only with a valid signature over `timestamp.body`, a timestamp within 5 minutes,
and a signature not seen before; anything else gets 401 (or 409 for a replay) and changes nothing. A
trusted one updates the task like a poll would: the reservation is settled or released, waiting
`poll_task` calls wake up, and subscribed clients hear `resources/updated`.

The receiver checks and parses; what a trusted callback does is the hosting mode's (`apply_here` in one
process, the fleet's transaction in replica mode), told back as an `Outcome` that maps to the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import metrics
from ..accounts import Accounts
from ..budget import LedgerUnavailableError
from ..gateway import webhooks
from ..gateway.models import Task

log = logging.getLogger(__name__)
Outcome = Literal["applied", "replay", "unknown", "unavailable"]  # what applying a trusted callback came to
Apply = Callable[[Task, str, str | None], Awaitable[Outcome]]  # (task, signature, our reservation id or None)


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "callback_error"}}, status_code=status)


def _answer(outcome: Outcome, task: Task) -> Response:
    if outcome == "unavailable":  # the gateway retries a 5xx
        return _refuse(503, "the ledger cannot record this callback now; retry later")
    if outcome == "replay":
        return _refuse(409, "this callback was already received")
    if outcome == "unknown":
        return _refuse(404, f"no task '{task.task_id}' here")
    return Response(status_code=204)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` (read no further)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


_RESULTS = {
    204: "ok",
    200: "ok",
    400: "malformed",
    401: "unsigned",
    404: "unknown",
    409: "replay",
    413: "too_large",
    503: "ledger_unavailable",
}


class CallbackReceiver:
    """`apply` does what a trusted callback asks (`apply_here`, or replica mode's fleet transaction)."""

    def __init__(self, apply: Apply, secret: str, *, max_bytes: int) -> None:
        self.apply = apply
        self._secret = secret
        self.max_bytes = max_bytes

    async def handle(self, request: Request) -> Response:
        response = await self._handle(request)
        metrics.callback(_RESULTS.get(response.status_code, str(response.status_code)))
        return response

    async def _handle(self, request: Request) -> Response:
        body = await _read_body(request, self.max_bytes)
        if body is None:
            return _refuse(413, "callback body too large")
        try:
            webhooks.verify(self._secret, request.headers, body)
        except webhooks.SignatureError as exc:
            log.warning("rejected a callback: %s", exc)
            return _refuse(401, f"untrusted callback: {exc}")
        signature = request.headers[webhooks.SIGNATURE_HEADER].strip().lower()
        try:
            task = Task.model_validate_json(body)
        except ValidationError:
            return _refuse(400, "callback body is not a task")
        if request.headers.get(webhooks.TASK_ID_HEADER) not in (None, task.task_id):
            return _refuse(400, "the task id header and the body disagree")
        return _answer(await self.apply(task, signature, self._reference(request)), task)

    def _reference(self, request: Request) -> str | None:
        """The reservation id in our callback URL, if we made it (its MAC is ours); else ignored."""
        given = request.query_params.get(webhooks.RESERVATION_PARAM)
        mac = request.query_params.get(webhooks.REFERENCE_MAC_PARAM)
        reservation_id = webhooks.verified_reference(self._secret, given, mac)
        if given and reservation_id is None:
            log.warning("ignored a callback's reservation reference that we did not make (no valid MAC)")
        return reservation_id


async def apply_here(accounts: Accounts, task: Task, signature: str, reservation_id: str | None) -> Outcome:
    """Apply a verified callback once in this process: settle or release its reservation, wake waiters and
    subscribers."""
    try:
        first = await accounts.store.first_sighting(signature, keep_seconds=2 * webhooks.DEFAULT_TOLERANCE)
    except LedgerUnavailableError as exc:  # cannot tell a replay from a first: let the gateway send it again
        log.error("cannot record a callback now (%s); answering 503 so that it is retried", exc)
        return "unavailable"
    if not first:
        log.warning("rejected a replayed callback for task %s", task.task_id)
        return "replay"
    found = accounts.find_task(task.task_id)
    if found is None and reservation_id:
        found = await accounts.adopt_created(reservation_id, task)
    if found is None:
        return "unknown"
    service, _ = found
    await service.registry.update(task)
    log.info("callback: task %s is %s", task.task_id, task.status)
    return "applied"
