"""The sandbox's task engine: the media tasks' state, the clock that moves each one pending -> running ->
succeeded | failed, its progress as polled, the wallet's hold settled or released at the end, and the
signed callback sent then. It knows no HTTP routes: the routes and the control plane drive it.

With `hold` set, a new task is left off the clock: only `advance` moves it on, so a test decides when it ends.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc

from ..gateway.models import ErrorBody, Task, TaskCredits, TaskOutput, TaskStatus
from . import assets
from .callbacks import CallbackSender
from .errors import SandboxError
from .faults import MALFORMED_LINK, BadLink
from .wallets import Wallet

FAIL_MARKER = "[sandbox:fail]"  # a prompt containing this always fails: a deterministic failure for demos
TASK_OBJECT = {"image": "gateway.image.task", "video": "gateway.video.task", "music": "gateway.music.task"}
Step = Literal["running", "succeeded", "failed"]


@dataclass
class SandboxTask:
    """A task as the sandbox keeps it: the gateway's view (`task`) and what decides its end."""

    task: Task
    key: str
    modality: str
    prompt: str
    reserved: int
    will_fail: bool
    callback_url: str | None
    base_url: str
    outputs: int = 1
    started: float = field(default_factory=time.monotonic)
    held: bool = False  # moved on only by /sandbox/tasks/{id}/advance, never by the clock
    ended_at: float | None = None  # unix seconds, to the microsecond: benchmarks time what follows the end
    polls: int = 0  # GET /v1/tasks/{id} of this very task (the request counters group all tasks)
    bad_link: BadLink | None = None  # succeeds with a broken result link (faults.bad_links)


@dataclass(frozen=True)
class NewTask:
    """What a create asks for, once priced and its credits reserved."""

    key: str
    modality: str
    model: str
    prompt: str
    credits: int
    callback_url: str | None
    base_url: str
    outputs: int
    bad_link: BadLink | None = None


class TaskEngine:
    """Every task the sandbox made, and the clock that ends them; runs while `running()` is open."""

    def __init__(
        self,
        wallets: Mapping[str, Wallet],
        callbacks: CallbackSender,
        *,
        task_seconds: float,
        failure_rate: float,
        hold: bool,
        rng: random.Random,
    ) -> None:
        self.wallets, self.callbacks = wallets, callbacks
        self.task_seconds = task_seconds
        self.failure_rate = failure_rate
        self.hold = hold  # new tasks wait for `advance` instead of the clock
        self.rng = rng
        self.tasks: dict[str, SandboxTask] = {}
        self.forgotten: dict[str, SandboxTask] = {}  # tasks dropped by the control plane (404 from then on)
        self._task_group: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The clocks and callbacks run in this task group; leaving it stops them all."""
        async with self.callbacks.connected(), anyio.create_task_group() as group:
            self._task_group = group
            yield
            group.cancel_scope.cancel()

    def open(self, new: NewTask) -> SandboxTask:
        """Make a pending task (its credits already reserved) and start its clock unless the engine holds."""
        task_id = "task_" + secrets.token_hex(12)
        now = int(time.time())
        task = Task(
            task_id=task_id,
            id=task_id,
            object=TASK_OBJECT[new.modality],
            status=TaskStatus.PENDING,
            model=new.model,
            created_at=now,
            updated_at=now,
            progress=0.0,
            credits=TaskCredits(reserved=new.credits),
        )
        will_fail = FAIL_MARKER in new.prompt or self.rng.random() < self.failure_rate
        entry = SandboxTask(
            task,
            new.key,
            new.modality,
            new.prompt,
            new.credits,
            will_fail,
            new.callback_url,
            new.base_url,
            new.outputs,
            held=self.hold,
            bad_link=new.bad_link,
        )
        self.tasks[task_id] = entry
        if not entry.held:
            self._spawn(self._run_clock, entry)
        return entry

    def owned(self, task_id: str, key: str) -> SandboxTask:
        """The task `task_id` if `key` made it; anything else is the gateway's 404."""
        entry = self.tasks.get(task_id)
        if entry is None or entry.key != key:
            raise SandboxError(404, "task_not_found", f"Task '{task_id}' was not found")
        return entry

    def poll(self, entry: SandboxTask) -> Task:
        """The task as a poll sees it: counted, and a running task's progress read from its clock."""
        entry.polls += 1
        task = entry.task
        if task.status == TaskStatus.RUNNING and not entry.held:
            elapsed = (time.monotonic() - entry.started) / max(self.task_seconds, 1e-9)
            task.progress = round(min(0.99, max(0.0, elapsed)), 3)
        return task

    def advance(self, entry: SandboxTask, to: Step, progress: float | None = None) -> Task:
        """Move an unfinished task on now: to running (at `progress` if given), or to its end."""
        if entry.task.is_terminal:
            raise SandboxError(409, "task_finished", f"Task '{entry.task.task_id}' already {entry.task.status}")
        if to == "running":
            self._start(entry)
            if progress is not None:
                entry.task.progress = progress
        else:
            entry.will_fail = to == "failed"
            self._finish(entry)
            if entry.callback_url:
                self._spawn(self._deliver_callback, entry)
        return entry.task

    def _spawn(self, func: Callable[[SandboxTask], Coroutine[Any, Any, None]], entry: SandboxTask) -> None:
        assert self._task_group is not None, "the sandbox app must run with its lifespan"
        self._task_group.start_soon(func, entry)

    async def _run_clock(self, entry: SandboxTask) -> None:
        """The task's life on the clock: pending for a fifth of its time, then running, then its end."""
        await anyio.sleep(self.task_seconds * 0.2)
        if entry.task.status == TaskStatus.PENDING:  # unless it was advanced meanwhile
            self._start(entry)
        await anyio.sleep(self.task_seconds * 0.8)
        if not entry.task.is_terminal and entry.task.task_id in self.tasks:  # unless forgotten meanwhile
            self._finish(entry)
            if entry.callback_url:
                await self._deliver_callback(entry)

    @staticmethod
    def _start(entry: SandboxTask) -> None:
        entry.task.status = TaskStatus.RUNNING
        entry.task.updated_at = int(time.time())

    def _finish(self, entry: SandboxTask) -> None:
        """Settle the charge on success, refund it on failure: the wallet's reservation ends either way."""
        wallet = self.wallets[entry.key]
        entry.ended_at = time.time()
        update: dict[str, object] = {"updated_at": int(entry.ended_at)}
        if entry.will_fail:
            wallet.release(entry.reserved)
            update |= {
                "status": TaskStatus.FAILED,
                "progress": None,
                "credits": TaskCredits(reserved=0, charged=0, refunded=entry.reserved),
                "error": ErrorBody(message="Generation failed upstream; credits refunded", code="upstream_error"),
            }
        else:
            wallet.settle(entry.reserved)
            update |= {
                "status": TaskStatus.SUCCEEDED,
                "progress": 1.0,
                "credits": TaskCredits(reserved=0, charged=entry.reserved),
                "outputs": [TaskOutput(url=url, mime_type=assets.MIME_TYPES[entry.modality]) for url in _urls(entry)],
            }
        entry.task = entry.task.model_copy(update=update)

    async def _deliver_callback(self, entry: SandboxTask) -> None:
        assert entry.callback_url is not None
        await self.callbacks.deliver(entry.task, entry.callback_url)


def _urls(entry: SandboxTask) -> list[str]:
    """Where a succeeded task's results are served: the sandbox's own files, or the broken link asked for."""
    if entry.bad_link == "link":
        return [MALFORMED_LINK] * entry.outputs
    base = f"{entry.base_url}/sandbox/files/{entry.task.task_id}"
    extension = assets.EXTENSIONS[assets.MIME_TYPES[entry.modality]]
    return [f"{base}/{i}.{extension}" for i in range(entry.outputs)]


__all__ = ["FAIL_MARKER", "NewTask", "SandboxTask", "TaskEngine"]
