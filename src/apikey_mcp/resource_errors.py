"""The one place a resource's failure becomes what the client reads: the error tree (errors.py) mapped to the
SDK's resource errors, worded for the resource that failed (the tools' counterpart is in strict.py)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import ParamSpec

from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from .budget import LedgerUnavailableError
from .errors import AgentError, GatewayError, LedgerError
from .gateway import NotFoundError

_P = ParamSpec("_P")


def resource_errors(
    cannot: str, *, missing: str | None = None
) -> Callable[[Callable[_P, Awaitable[str]]], Callable[_P, Awaitable[str]]]:
    """Map what a resource raises: `cannot` says what failed (`read task '{task_id}'`, formatted with the
    resource's arguments) before a gateway error's text; `missing` words the gateway's 404 as not found."""

    def wrap(read: Callable[_P, Awaitable[str]]) -> Callable[_P, Awaitable[str]]:
        signature = inspect.signature(read)

        @functools.wraps(read)
        async def mapped(*args: _P.args, **kwargs: _P.kwargs) -> str:
            try:
                return await read(*args, **kwargs)
            except GatewayError as exc:
                named = signature.bind(*args, **kwargs).arguments
                if isinstance(exc, NotFoundError) and missing is not None:
                    raise ResourceNotFoundError(missing.format(**named)) from None
                raise ResourceError(f"Cannot {cannot.format(**named)}: {exc}") from None
            except LedgerUnavailableError as exc:
                raise ResourceError(f"The budget ledger cannot be read now ({exc})") from None
            except (LedgerError, AgentError) as exc:
                raise ResourceError(str(exc)) from None

        return mapped

    return wrap
