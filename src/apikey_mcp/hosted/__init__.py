"""Hosted mode: the MCP server over Streamable HTTP and SSE for remote agents, with auth and a state file."""

from .app import HostingError, create_app, serve

__all__ = ["HostingError", "create_app", "serve"]
