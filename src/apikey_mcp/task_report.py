"""A media task as the agent reads it: its state, outputs (with local paths once saved), charge and next step."""

from __future__ import annotations

from collections.abc import Sequence

from .gateway.models import TaskStatus
from .results import BudgetTotals, OutputFile, TaskResult
from .tasks import TrackedTask
from .tracked import lost_step


def task_report(
    tracked: TrackedTask, saved: Sequence[str | None], *, sandbox: bool, budget: BudgetTotals, warning: str | None
) -> TaskResult:
    """The task's result; `saved` holds the local path of each output (None where not saved)."""
    task, reservation = tracked.task, tracked.reservation
    outputs = [
        OutputFile(url=o.url, mime_type=o.mime_type, path=saved[i] if i < len(saved) else None)
        for i, o in enumerate(o for o in task.outputs if o.url)
    ]
    charged = task.credits.charged if task.credits else None
    if task.status == TaskStatus.SUCCEEDED:
        step = _done_step(sandbox, any(saved))
    elif task.status == TaskStatus.FAILED:
        held = f"its {reservation.credits} reserved credits were released" if reservation else "nothing was charged"
        step = f"The task failed and {held}. Adjust the prompt or parameters and try again."
    else:
        step = "Still working: call poll_task with this task_id and wait_seconds (polling is free)."
    status = str(task.status)
    if tracked.lost_at is not None and not task.is_terminal:
        status, step = "lost", lost_step(tracked)
    elif tracked.missing_since is not None and not task.is_terminal:
        step = (
            "The gateway does not know this task just now (it answers 404); its hold stays counted. If "
            "that lasts a minute, the task is marked lost for the operator to close."
        )
    if warning:
        step = f"{step} {warning}"
    return TaskResult(
        task_id=task.task_id,
        status=status,
        modality=tracked.modality,
        model=task.model,
        progress=task.progress,
        credits_reserved=reservation.credits if reservation else None,
        credits_charged=charged if task.status == TaskStatus.SUCCEEDED else None,
        outputs=outputs,
        error=task.error.message if task.error else None,
        next_step=step,
        budget=budget,
    )


def _done_step(sandbox: bool, saved: bool) -> str:
    if saved:
        return "Done: the outputs are links, saved locally too."
    if sandbox:  # the sandbox serves its files from this process: they go when it stops
        return "Done: the outputs are links to the sandbox gateway, served only while this server runs."
    return "Done: the outputs are durable links."
