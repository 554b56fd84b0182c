"""Where local data lives by default: the user data directory of each OS (platformdirs)."""

from __future__ import annotations

from pathlib import Path

import platformdirs


def default_state_file() -> Path:
    """The SQLite ledger's default place: ~/.local/share/apikey-mcp/state.sqlite3 on Linux ($XDG_DATA_HOME if
    set), ~/Library/Application Support/apikey-mcp/state.sqlite3 on macOS, and
    %LOCALAPPDATA%\\apikey-mcp\\apikey-mcp\\state.sqlite3 on Windows."""
    return Path(platformdirs.user_data_dir("apikey-mcp")) / "state.sqlite3"
