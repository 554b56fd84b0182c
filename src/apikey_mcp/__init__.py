"""apikey-mcp: an MCP server for the API-Key gateway, with an enforced credit budget and a sandbox gateway."""

__version__ = "0.1.0"
__all__ = ["__version__"]
