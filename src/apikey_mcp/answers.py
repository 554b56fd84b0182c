"""What the agent reads: each result as a one-line summary, its JSON and links, and each anticipated failure
as a ToolError that says what happened and what to do next."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ResourceLink, TextContent
from pydantic import BaseModel, ValidationError

from .budget import BudgetExceededError, LedgerUnavailableError
from .gateway import GatewayError
from .gateway.models import TaskStatus
from .policy import PolicyRefusedError
from .results import COST_META, ChatResult, EmbeddingsResult, TaskResult, TaskStarted, credits_text, dump
from .service import InputError, LedgerRefusedError
from .strict import refusal


@contextmanager
def agent_errors() -> Iterator[None]:
    """Every anticipated failure becomes a ToolError whose text says what happened and what to do."""
    try:
        yield
    except BudgetExceededError as exc:
        _sorted("refused_budget")
        raise ToolError(over_budget(exc)) from None
    except InputError as exc:
        _sorted("refused_input")
        raise ToolError(str(exc)) from None
    except PolicyRefusedError as exc:
        _sorted("refused_policy")
        raise ToolError(str(exc)) from None
    except LedgerRefusedError as exc:
        _sorted("ledger_unavailable")
        raise ToolError(str(exc)) from None
    except LedgerUnavailableError as exc:
        _sorted("ledger_unavailable")
        raise ToolError(f"The budget ledger cannot be read now ({exc}); try again shortly.") from None
    except GatewayError as exc:
        _sorted("gateway_error")
        raise ToolError(f"Gateway error{f' ({exc.code})' if exc.code else ''}: {exc}") from None
    except ValidationError as exc:  # a gateway request built from valid arguments can still be refused
        _sorted("refused_input")
        raise ToolError(refusal(exc)) from None


_outcome: ContextVar[list[str] | None] = ContextVar("apikey_mcp_outcome", default=None)


@contextmanager
def sorting_outcome() -> Iterator[list[str]]:
    """Collect how the tool call in this block failed, if it did (for `apikey_tool_calls_total{outcome}`)."""
    holder: list[str] = []
    token = _outcome.set(holder)
    try:
        yield holder
    finally:
        _outcome.reset(token)


def _sorted(outcome: str) -> None:
    if (holder := _outcome.get()) is not None:
        holder.append(outcome)


_CHEAPER = {
    "video": "a shorter or lower-resolution video",
    "image": "fewer or smaller images",
    "music": "a shorter piece",
    "chat": "a shorter conversation or a lower max_tokens",
    "embeddings": "fewer or shorter texts",
}


def over_budget(exc: BudgetExceededError) -> str:
    """Refused as over budget, with advice that fits the kind of call (no resolution for a chat)."""
    cheaper = _CHEAPER.get(exc.purpose.split(" ", 1)[0], "a smaller job")
    return (
        f"Over budget: {exc.purpose} is estimated at {credits_text(exc.needed)} but only {exc.remaining} of the "
        f"session's {exc.budget} remain, so nothing was created. Try {cheaper}, or a cheaper model (list_models, "
        "estimate), or ask the human to raise the budget (request_budget_increase)."
    )


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
