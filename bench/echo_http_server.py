"""The baseline for http_bench.py: echo_server.py's bare MCPServer, served over Streamable HTTP by uvicorn.

No auth, no state, logging at WARNING (as http_bench.py runs apikey-mcp): whatever it costs per call and per
open session is the SDK's, Starlette's and uvicorn's share. Run: `python bench/echo_http_server.py --port P`.
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server import MCPServer

server = MCPServer("echo", log_level="WARNING")  # as http_bench.py runs apikey-mcp


@server.tool()
async def echo(text: str) -> str:
    """Return the text unchanged. Async, as every apikey-mcp tool is: the SDK runs a plain `def` tool in a worker
    thread, and that hop would make the baseline slower than the code it is the baseline for."""
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a bare MCPServer with one echo tool, over Streamable HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = server.streamable_http_app(streamable_http_path="/mcp", host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
