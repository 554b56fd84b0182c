"""Hosted mode: the MCP server over Streamable HTTP and SSE for remote agents, with auth and a state file."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
