"""Who may use the MCP endpoints: operator-issued tokens, OAuth 2.1 access tokens, or both, each on its own door.

- Tokens only: `/mcp` and `/sse` take the operator's static bearer tokens; nothing advertises OAuth.
- OAuth (`--oauth-issuer`): `/mcp` and `/sse` take the issuer's JWT access tokens for this resource, and
  Protected Resource Metadata (RFC 9728) at `/.well-known/oauth-protected-resource/mcp` names the issuer; a
  401 points at it in `WWW-Authenticate`, a token without the required scope gets 403.
- Both: static tokens move to `/token/mcp` and `/token/sse`, a path with no metadata document and no
  `resource_metadata` in its 401s. Clients that find OAuth metadata ignore a configured header (Claude Code,
  Cursor), so a header-configured client must never be sent to a door that advertises OAuth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.authentication import AuthenticationBackend
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from .auth import StaticTokenVerifier
from .oauth import JwtVerifier

log = logging.getLogger(__name__)
STATIC_PREFIX = "/token"  # where static tokens are taken when OAuth owns /mcp and /sse


@dataclass
class Door:
    """One set of MCP endpoints under `prefix`, and what it takes to pass."""

    prefix: str
    kind: str
    verifier: TokenVerifier | None
    scopes: list[str]
    metadata_url: AnyHttpUrl | None = None

    @property
    def authenticated(self) -> bool:
        return self.verifier is not None

    def guard(self, app: ASGIApp) -> ASGIApp:
        return app if self.verifier is None else _Guard(app, self.scopes, self.metadata_url)


class _Guard:
    """401 without a valid token, 403 without the scope; like the SDK's RequireAuthMiddleware, but the
    challenge also names the scope (RFC 6750 §3), which the MCP spec asks for so a client can step up."""

    def __init__(self, app: ASGIApp, scopes: list[str], metadata_url: AnyHttpUrl | None) -> None:
        self.app = app
        self.scopes = scopes
        self.metadata_url = metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not isinstance(scope.get("user"), AuthenticatedUser):
            return await self._refuse(send, 401, "invalid_token", "Authentication required")
        granted = scope["auth"].scopes if scope.get("auth") is not None else []
        if missing := [s for s in self.scopes if s not in granted]:
            return await self._refuse(send, 403, "insufficient_scope", f"Required scope: {' '.join(missing)}")
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, status: int, error: str, description: str) -> None:
        params = [f'error="{error}"', f'error_description="{description}"']
        if self.scopes:
            params.append(f'scope="{" ".join(self.scopes)}"')
        if self.metadata_url:
            params.append(f'resource_metadata="{self.metadata_url}"')
        response = JSONResponse(
            {"error": error, "error_description": description},
            status_code=status,
            headers={"WWW-Authenticate": "Bearer " + ", ".join(params)},
        )
        await response(scope={"type": "http"}, receive=_nothing, send=send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


class _ByDoor(AuthenticationBackend):
    """Each request's bearer token is checked by the verifier of the door it came through."""

    def __init__(self, doors: list[Door]) -> None:
        self._backends = [(d.prefix, BearerAuthBackend(d.verifier)) for d in doors if d.verifier is not None]
        self._backends.sort(key=lambda pair: -len(pair[0]))  # the longest prefix first

    async def authenticate(self, conn: HTTPConnection):  # type: ignore[no-untyped-def]
        path = conn.url.path
        for prefix, backend in self._backends:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return await backend.authenticate(conn)
        return None


def _names(listed: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in listed.split(",") if name.strip())


class Access:
    def __init__(self, doors: list[Door], jwt_verifier: JwtVerifier | None, resource: str) -> None:
        self.doors = doors
        self._jwt = jwt_verifier
        self.resource = resource

    @classmethod
    def configure(cls, settings: Settings, tokens: dict[str, str], *, resource: str) -> Access:
        static = StaticTokenVerifier(tokens) if tokens else None
        if settings.oauth_issuer is None:
            kind = "operator tokens" if static else "NO authentication"
            return cls([Door("", kind, static, [])], None, resource)
        verifier = JwtVerifier(settings.oauth_issuer, resource, algorithms=_names(settings.oauth_algorithms))
        scopes = [settings.oauth_scope] if settings.oauth_scope else []
        oauth = Door("", "OAuth", verifier, scopes, build_resource_metadata_url(AnyHttpUrl(resource)))
        doors = [oauth]
        if static is not None:
            doors.append(Door(STATIC_PREFIX, "operator tokens", static, []))
        return cls(doors, verifier, resource)

    def metadata_routes(self) -> list[Route]:
        """RFC 9728 Protected Resource Metadata, only when OAuth is configured."""
        if self._jwt is None:
            return []
        scopes = self.doors[0].scopes or None
        # Strings, not AnyHttpUrl: the metadata model keeps a path-less issuer as is, while AnyHttpUrl would add
        # a '/' that breaks the exact issuer comparison clients make (RFC 8414 §3.3).
        return create_protected_resource_routes(
            resource_url=self.resource,  # type: ignore[arg-type]
            authorization_servers=[self._jwt.issuer],  # type: ignore[list-item]
            scopes_supported=scopes,
            resource_name="apikey-mcp",
        )

    def middleware(self) -> list[Middleware]:
        return [Middleware(AuthenticationMiddleware, backend=_ByDoor(self.doors)), Middleware(AuthContextMiddleware)]

    async def __aenter__(self) -> Access:
        if self._jwt is not None and await self._jwt.warm() == 0:
            log.warning("no signing keys from %s yet: OAuth tokens are refused until it answers", self._jwt.issuer)
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._jwt is not None:
            await self._jwt.aclose()
