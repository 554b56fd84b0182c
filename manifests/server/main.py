"""Entry point of the Desktop Extension: runs apikey-mcp from the source bundled beside it.

The bundle carries no installed packages: Claude Desktop's uv installs the dependencies named in the
bundle's pyproject.toml for the user's own platform and Python, so one bundle installs anywhere.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from apikey_mcp.cli import main  # after the path above

main()
