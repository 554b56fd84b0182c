"""Entry point of the MCPB Desktop Extension: the bundle ships apikey-mcp and its dependencies in server/lib."""

from apikey_mcp.cli import main

main()
