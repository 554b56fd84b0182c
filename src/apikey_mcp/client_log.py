"""Key events sent to the MCP client's log channel (a task created, a budget raised), beside the stderr log."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPDeprecationWarning

log = logging.getLogger("apikey_mcp")
Level = Literal["debug", "info", "warning", "error"]


async def tell(ctx: Context, level: Level, message: str) -> None:
    """Send a line to the client's log channel (stderr has it already from the layer that did the work).
    Never fails the calling tool.

    MCP logging is deprecated in the 2026-07-28 protocol, but the clients in use today speak earlier
    versions and show these lines; the SDK only delivers them where the client opted in.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            sending = ctx.session.send_log_message(
                level=level, data=message, logger="apikey_mcp", related_request_id=ctx.request_id
            )
        await sending
    except Exception as exc:  # the client may be gone or may not take logs: the tool's answer matters more
        log.debug("could not send a log line to the client: %s", exc)
