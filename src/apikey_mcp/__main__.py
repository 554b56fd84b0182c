"""`python -m apikey_mcp`: the same as the `apikey-mcp` command."""

from .cli import main

main()
