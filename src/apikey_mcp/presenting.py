"""How a tool's result is presented to the agent: a one-line summary first, then its JSON (the models are in
results.py) and links to its files. Failures are worded where they are raised and mapped in strict.py."""

from __future__ import annotations

import json

from mcp.types import CallToolResult, ContentBlock, ResourceLink, TextContent
from pydantic import BaseModel

from .gateway.models import TaskStatus
from .results import COST_META, ChatResult, EmbeddingsResult, TaskResult, TaskStarted, credits_text, dump


def shaped(result: BaseModel, summary: str, links: list[ResourceLink] | None = None) -> CallToolResult:
    """A structured result with a one-line summary first, the JSON for clients that read only text, and links.

    A paid result also carries its cost and the budget's totals in `_meta`, for clients that track spend.
    """
    data = dump(result)
    content: list[ContentBlock] = [
        TextContent(type="text", text=summary),
        TextContent(type="text", text=json.dumps(data)),
    ]
    meta = {COST_META: result.cost()} if isinstance(result, TaskStarted | ChatResult | EmbeddingsResult) else None
    return CallToolResult(content=content + (links or []), structured_content=data, meta=meta)


def task_summary(result: TaskResult) -> str:
    head = f"Task {result.task_id} ({result.modality or 'media'}, {result.model or 'model ?'}): {result.status}"
    if result.status == TaskStatus.SUCCEEDED:
        head += f", charged {credits_text(result.credits_charged or 0)}, {len(result.outputs)} output(s)"
    elif result.progress is not None and result.status == TaskStatus.RUNNING:
        head += f" ({result.progress:.0%})"
    return f"{head}. {result.next_step} {result.budget.line()}"


def task_links(result: TaskResult) -> list[ResourceLink]:
    return [
        ResourceLink(
            type="resource_link",
            uri=o.url,
            name=f"{result.task_id}-{i}",
            mime_type=o.mime_type,
            description=f"Result {i + 1} of task {result.task_id}" + (f", saved at {o.path}" * bool(o.path)),
        )
        for i, o in enumerate(result.outputs)
    ]
