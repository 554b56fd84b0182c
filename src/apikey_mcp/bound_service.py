"""The service of the principal whose request is being handled: bound by the server's middleware for each
request, read by the tools, their resolvers and the resources (so none of them threads it through)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .service import Service

_current: ContextVar[Service] = ContextVar("apikey_mcp_service")


def current_service() -> Service:
    """The service of the principal whose request is being handled."""
    return _current.get()


@contextmanager
def serving(service: Service) -> Iterator[None]:
    """Bind `service` for the request handled inside the block."""
    token = _current.set(service)
    try:
        yield
    finally:
        _current.reset(token)
