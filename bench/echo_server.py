"""The baseline for stdio_bench.py: a bare MCPServer with one trivial tool.

Whatever it costs to start and to answer a call is the SDK's and Python's share; anything apikey-mcp costs on
top of it (and on top of the gateway round trip) is ours.
"""

from mcp.server import MCPServer

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    server.run("stdio")
