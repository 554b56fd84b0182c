"""The second baseline for stdio_bench.py: a bare MCPServer whose one tool makes poll_task's gateway call.

`get_task(task_id)` does `GatewayClient.get_task` against the gateway in APIKEY_BASE_URL with the key in
APIKEY_API_KEY, over one client opened for the server's lifetime (as apikey-mcp does), and returns the task's
status. poll_task does that same GET and more; whatever it costs beyond this server is our own code's share.
Logging is at WARNING, as stdio_bench.py runs apikey-mcp.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import Context, MCPServer

from apikey_mcp.gateway import GatewayClient


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(os.environ["APIKEY_BASE_URL"], os.environ["APIKEY_API_KEY"]) as client:
        yield client


server = MCPServer("get", lifespan=lifespan, log_level="WARNING")


@server.tool()
async def get_task(task_id: str, ctx: Context) -> str:
    """The task's status, straight from the gateway."""
    client: GatewayClient = ctx.request_context.lifespan_context
    return str((await client.get_task(task_id)).status)


if __name__ == "__main__":
    server.run("stdio")
