"""Callback delivery: the signed POST the sandbox sends to a task's callback_url when the task ends, retried
on 5xx and network errors, and a record of every answer for the tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2

from ..gateway import webhooks
from ..gateway.models import Task, TaskStatus

log = logging.getLogger(__name__)
ATTEMPTS = 3  # the first try and two retries, 0.5 s then 1 s apart


class CallbackSender:
    """Signs each callback with the webhook secret; usable while `connected()` is open."""

    def __init__(self, webhook_secret: str) -> None:
        self.webhook_secret = webhook_secret
        self.sent: list[dict[str, object]] = []  # {"task_id", "status"} for each answer received
        self._http: httpx2.AsyncClient | None = None

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """The HTTP client callbacks are sent with, for as long as the sandbox runs."""
        async with httpx2.AsyncClient(timeout=10) as http:
            self._http = http
            yield

    async def deliver(self, task: Task, url: str) -> None:
        """POST the ended task to `url`; a bad URL is logged and given up, never raised."""
        event = webhooks.EVENT_COMPLETED if task.status == TaskStatus.SUCCEEDED else webhooks.EVENT_FAILED
        body = task.model_dump_json(exclude_none=True).encode()
        assert self._http is not None, "callbacks are sent only while the sandbox runs"
        for attempt in range(ATTEMPTS):
            headers = webhooks.signed_headers(self.webhook_secret, event, task.task_id, body)
            try:
                response = await self._http.post(url, content=body, headers=headers)
                self.sent.append({"task_id": task.task_id, "status": response.status_code})
                if response.status_code < 500:
                    return
            except Exception as exc:  # a bad callback URL must not stop the sandbox's task clock
                log.warning("callback for %s failed: %s", task.task_id, type(exc).__name__)
            await anyio.sleep(0.5 * 2**attempt)


__all__ = ["CallbackSender"]
