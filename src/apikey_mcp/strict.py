"""The tool wrapper: strict inputs, and the one place a tool's failure becomes what the agent reads.

The SDK builds a pydantic model of each tool's arguments that ignores unknown keys, so `durtion=10` would
be dropped and the job charged at the model's default duration. `StrictTool` forbids them, and words every
argument error itself, one line per field: what was wrong and what is allowed. Every anticipated failure of
a tool or its resolvers (the error tree in errors.py) becomes a ToolError here, its outcome noted for
`apikey_tool_calls_total{outcome}`; anything else stays a crash.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, ValidationError

from .budget import LedgerUnavailableError
from .errors import AgentError, GatewayError, LedgerError
from .gateway import requests
from .lean_schemas import lean

_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "url"}
# What we send the gateway: a request of these that the contract refuses was never sent. Any other model's
# validation error (an answer we built, a result the SDK checked) is a bug, and is reported as one.
_REQUESTS = frozenset(n for n, v in vars(requests).items() if isinstance(v, type) and issubclass(v, BaseModel))


class StrictTool(Tool):
    """A tool whose arguments must all be known, whose schemas are lean and whose description is plain text."""

    @classmethod
    def of(cls, fn: Callable[..., Any], *, name: str, title: str, annotations: ToolAnnotations) -> StrictTool:
        description = _plain(fn.__doc__ or "")
        tool = cls.from_function(fn, name=name, title=title, annotations=annotations, description=description)
        assert isinstance(tool, StrictTool)  # from_function builds `cls`
        metadata = tool.fn_metadata
        base = metadata.arg_model
        metadata.arg_model = type(
            base.__name__, (base,), {"model_config": ConfigDict(extra="forbid"), "__module__": base.__module__}
        )
        tool.parameters = lean(metadata.arg_model.model_json_schema(by_alias=True), inputs=True)
        if metadata.output_schema is not None:
            metadata.output_schema = lean(metadata.output_schema)
        return tool

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            self.fn_metadata.validate_arguments(arguments)
        except ValidationError as exc:
            accepted = list(self.parameters.get("properties", {}))
            raise ToolError(refusal(exc, self.name, accepted)) from exc
        try:
            return await super().run(arguments, context, convert_result=convert_result)
        except UnexpectedToolError as exc:  # the SDK's "Error executing tool X", caused by what was raised
            reading = agent_reading(exc.__cause__)
            if reading is None:
                raise
            raise ToolError(f"{exc}: {reading}") from exc.__cause__


def agent_reading(exc: BaseException | None) -> str | None:
    """What the agent reads for an anticipated failure, its outcome noted; None for a crash (reported as one)."""
    if isinstance(exc, AgentError):
        outcome, text = exc.outcome, str(exc)
    elif isinstance(exc, LedgerUnavailableError):
        outcome, text = "ledger_unavailable", f"The budget ledger cannot be read now ({exc}); try again shortly."
    elif isinstance(exc, LedgerError):  # the others say what became of the call themselves
        outcome, text = "ledger_unavailable", str(exc)
    elif isinstance(exc, GatewayError):
        outcome, text = "gateway_error", f"Gateway error{f' ({exc.code})' if exc.code else ''}: {exc}"
    elif isinstance(exc, ValidationError) and exc.title in _REQUESTS:  # valid arguments, a request refused
        outcome, text = "refused_input", refusal(exc)
    else:
        return None
    if (holder := _outcome.get()) is not None:
        holder.append(outcome)
    return text


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


def refusal(exc: ValidationError, tool: str | None = None, accepted: list[str] | None = None) -> str:
    """The agent's reading of an argument error: a head line, then one line per field."""
    found: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        found.setdefault(_path(error["loc"]), []).append(explain(error, tool, accepted))
    lines = [f"- {field}: {_either(reasons)}" for field, reasons in found.items()]
    if tool is None:
        head = "Invalid arguments; nothing was sent to the gateway:"
    else:
        head = f"{tool} refused its arguments; nothing was estimated, reserved or created:"
    return "\n".join([head, *lines])


def _either(reasons: list[str]) -> str:
    """One line for a field: the alternatives of a union together (`must be a text or a list (got 5).`)."""
    kinds = [m for r in reasons if (m := re.fullmatch(r"must be (an? \w+) \(got (.*)\)\.", r))]
    if len(reasons) > 1 and len(kinds) == len(reasons):
        return f"must be {' or '.join(dict.fromkeys(k.group(1) for k in kinds))} (got {kinds[0].group(2)})."
    return reasons[0]


def _plain(doc: str) -> str:
    """A docstring as the agent should read it: paragraphs on one line each, no source indentation."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _path(loc: tuple[int | str, ...]) -> str:
    """`('messages', 0, 'role')` -> `messages[0].role`; union branch tags (`str`, `list[...]`) left out."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part.lower() not in _TYPE_NAMES:
            path += f".{part}" if path else part
        else:
            break
    return path or "arguments"


def _shown(value: Any) -> str:
    """A short rendering of what was given, never the whole of a long text."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a text of {len(value)} characters"
    if isinstance(value, bool | int | float) or value is None:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"


def explain(error: Any, tool: str | None = None, accepted: list[str] | None = None, *, secret: bool = False) -> str:
    """One pydantic error as what is allowed and what was given (never a secret's value)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    got = "a value that is not shown" if secret else _shown(error.get("input"))
    if kind == "extra_forbidden":
        if tool is None or accepted is None:
            return "not an accepted field."
        return f"not an argument of {tool}. It accepts: {', '.join(accepted)}."
    if kind == "missing":
        return "required, and missing."
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        word = {
            "greater_than_equal": "at least",
            "greater_than": "more than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        limit = next(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt"))
        return f"must be {word} {limit:g} (got {got})."
    if kind == "string_too_short":
        return "must not be empty." if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} characters."
    if kind == "string_too_long":
        return f"is {len(error['input'])} characters long; at most {ctx['max_length']} are allowed."
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)."
    if kind == "too_long":
        return f"has {ctx.get('actual_length')} items; at most {ctx.get('max_length')} are allowed."
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')} (got {got})."
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {got})."
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {got})."
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {got})."
    if kind == "string_type":
        return f"must be a text (got {got})."
    if kind == "list_type":
        return f"must be a list (got {got})."
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be an object (got {got})."
    if kind.startswith("url"):
        return f"must be an http(s) URL (got {got})."
    return f"{error['msg'].rstrip('.')} (got {got})."
