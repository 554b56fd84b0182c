"""Telling subscribed clients that a task resource changed, on every protocol generation, to its principal only.

2026-07-28 clients listen through the SDK's subscription bus (`subscriptions/listen`, limited per principal
in limits.py); earlier clients (most in use today) send `resources/subscribe`, which MCPServer does not
serve, so a handler here records their sessions and notifies them.

Either way a principal may subscribe only to its own tasks' URIs: anything else is refused (subscribe) or
not honoured (listen) and never stored. A session holds at most MAX_PER_SESSION subscriptions, kept by weak
reference, so they go with the session; a task's subscribers are forgotten once it has ended.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import (
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)

from ..accounts import LOCAL
from ..tasks import TrackedTask
from .limits import ListenLimit

log = logging.getLogger(__name__)
TASK_PREFIX = "apikey://tasks/"
MAX_PER_SESSION = 256


def task_uri(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}"


def _connection(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The client's connection, which lives as long as its session (`ctx.session` is per request, and the
    SDK offers no public way from a lowlevel handler to the connection)."""
    return ctx.session._connection  # SDK private: ServerSession has no public accessor for its Connection


def _principal() -> str:
    token = get_access_token()
    return token.client_id if token is not None else LOCAL


class ResourceUpdates:
    """`owns(principal, task_id)` says whether a task is the principal's (loading it if another process of
    the same ledger created it)."""

    def __init__(
        self, owns: Callable[[str, str], Awaitable[bool]], *, listens_per_principal: int, listens_total: int
    ) -> None:
        self.bus = InMemorySubscriptionBus()
        self._owns = owns
        self.listen = ListenLimit(self.bus, listens_per_principal, listens_total, self.owned)
        self._subscribers: dict[str, weakref.WeakSet[Any]] = {}  # uri -> sessions (all of the task's principal)
        self._per_session: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()

    async def owned(self, principal: str, uris: Iterable[str]) -> list[str]:
        """The principal's own task URIs among `uris` (at most MAX_PER_SESSION of them are looked at)."""
        wanted = [u for u in list(uris)[:MAX_PER_SESSION] if u.startswith(TASK_PREFIX)]
        return [u for u in wanted if await self._owns(principal, u.removeprefix(TASK_PREFIX))]

    def install(self, server: MCPServer) -> None:
        """Serve resources/(un)subscribe for 2025-era clients and a per-principal subscriptions/listen."""
        lowlevel = server._lowlevel_server  # SDK private: no public hook binds a spec method (extensions may not)
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)
        lowlevel.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, self.listen)

    def subscriptions(self) -> int:
        """How many (session, uri) subscriptions are held."""
        return sum(len(sessions) for sessions in self._subscribers.values())

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        if not await self.owned(_principal(), [uri]):
            raise MCPError(INVALID_PARAMS, "Only your own tasks can be subscribed to: apikey://tasks/<task_id>")
        connection = _connection(ctx)
        uris = self._per_session.setdefault(connection, set())
        if uri not in uris and len(uris) >= MAX_PER_SESSION:
            raise MCPError(INVALID_PARAMS, f"At most {MAX_PER_SESSION} subscriptions per session: unsubscribe first")
        uris.add(uri)
        self._subscribers.setdefault(uri, weakref.WeakSet()).add(connection)
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        connection = _connection(ctx)
        self._per_session.get(connection, set()).discard(uri)
        if (sessions := self._subscribers.get(uri)) is not None:
            sessions.discard(connection)
            if not sessions:
                del self._subscribers[uri]
        return EmptyResult()

    async def announce(self, task_id: str) -> None:
        """Tell the listen streams that the task changed (each honours only its principal's tasks)."""
        await self.bus.publish(ResourceUpdated(uri=task_uri(task_id)))

    async def task_changed(self, principal: str, tracked: TrackedTask) -> None:
        uri = task_uri(tracked.task_id)
        await self.announce(tracked.task_id)
        sessions = self._subscribers.get(uri)
        if sessions is None:
            return
        if tracked.task.is_terminal or not sessions:  # nothing will change again, or nobody is left to hear it
            del self._subscribers[uri]
        for session in list(sessions):
            if tracked.task.is_terminal:
                self._per_session.get(session, set()).discard(uri)
            try:
                await session.send_resource_updated(uri)
            except Exception as exc:  # the session is gone: forget it
                log.debug("dropping a subscriber of %s: %s", uri, type(exc).__name__)
                sessions.discard(session)
