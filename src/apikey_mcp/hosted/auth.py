"""Bearer tokens the operator issues for this server: each names a principal with its own budget.

Tokens come from APIKEY_MCP_AUTH_TOKENS ("alice=token1,bob=token2") or a file of `name=token` lines.
They are compared in constant time and never logged; the SDK's bearer middleware answers 401 with
`WWW-Authenticate` when one is missing or wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from mcp.server.auth.provider import AccessToken

from ..config import Settings
from ..errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_TOKEN_LENGTH = 16


class TokenConfigError(ConfigError):
    """The operator's token configuration is unusable; the message says how to fix it."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"APIKEY_MCP_AUTH_TOKENS / APIKEY_MCP_AUTH_TOKENS_FILE: {problem}; each entry is name=token, with a "
            f"token of {MIN_TOKEN_LENGTH} or more characters."
        )


def parse_tokens(text: str) -> dict[str, str]:
    """`name=token` pairs separated by commas or new lines; blank lines and `#` comments are skipped."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not _NAME.fullmatch(name) or not token:
            raise TokenConfigError(f"auth token entry {number} is not name=token (names: letters, digits, _.@-)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenConfigError(f"the token for '{name}' is shorter than {MIN_TOKEN_LENGTH} characters")
        if name in tokens:
            raise TokenConfigError(f"principal '{name}' has more than one token")
        if token in tokens.values():
            raise TokenConfigError(f"principal '{name}' shares a token with another principal")
        tokens[name] = token
    return tokens


def load_tokens(settings: Settings) -> dict[str, str]:
    tokens = parse_tokens(settings.auth_tokens.get_secret_value()) if settings.auth_tokens else {}
    if settings.auth_tokens_file is not None:
        for name, token in parse_tokens(Path(settings.auth_tokens_file).read_text()).items():
            if name in tokens:
                raise TokenConfigError(f"principal '{name}' is in both APIKEY_MCP_AUTH_TOKENS and the tokens file")
            tokens[name] = token
    return tokens


class StaticTokenVerifier:
    """The SDK's TokenVerifier for operator-issued tokens; the principal is the token's name."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._by_digest = {_digest(token): (name, token.encode()) for name, token in tokens.items()}

    async def verify_token(self, token: str) -> AccessToken | None:
        """Found by the token's SHA-256 (which says nothing useful about a near miss), then confirmed in
        constant time, so the cost does not grow with the number of principals."""
        offered = token.encode()
        name, expected = self._by_digest.get(_digest(token), ("", b""))
        if not name or not hmac.compare_digest(offered, expected):
            return None
        return AccessToken(token=token, client_id=name, scopes=[])

    def __repr__(self) -> str:
        return f"StaticTokenVerifier(principals={[name for name, _ in self._by_digest.values()]})"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
