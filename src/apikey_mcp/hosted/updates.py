"""Telling subscribed clients that a task resource changed, on every protocol generation.

2026-07-28 clients listen through the SDK's subscription bus; earlier clients (most in use today) send
`resources/subscribe`, which MCPServer does not serve, so a handler here records their sessions and
notifies them. A session hears only about tasks of its own principal.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from ..accounts import LOCAL
from ..tasks import TrackedTask

log = logging.getLogger(__name__)


def task_uri(task_id: str) -> str:
    return f"apikey://tasks/{task_id}"


class ResourceUpdates:
    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._sessions: dict[str, dict[Any, str]] = defaultdict(dict)  # uri -> {session: principal}

    def install(self, server: MCPServer) -> None:
        """Serve resources/subscribe and resources/unsubscribe for 2025-era clients."""
        lowlevel = server._lowlevel_server  # MCPServer has no public hook for these two requests
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        token = get_access_token()
        self._sessions[str(params.uri)][ctx.session] = token.client_id if token else LOCAL
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        self._sessions[str(params.uri)].pop(ctx.session, None)
        return EmptyResult()

    async def task_changed(self, principal: str, tracked: TrackedTask) -> None:
        uri = task_uri(tracked.task_id)
        await self.bus.publish(ResourceUpdated(uri=uri))
        for session, owner in list(self._sessions.get(uri, {}).items()):
            if owner != principal:
                continue
            try:
                await session.send_resource_updated(uri)
            except Exception as exc:  # the session is gone: forget it
                log.debug("dropping a subscriber of %s: %s", uri, type(exc).__name__)
                self._sessions[uri].pop(session, None)
