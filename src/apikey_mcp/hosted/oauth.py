"""OAuth 2.1 resource server: JWT access tokens from one authorization server, checked here.

The issuer's metadata (RFC 8414, or OpenID discovery) names its JWKS; both are fetched with the async HTTP
client (never PyJWKClient, whose urllib call would block the event loop) and cached. A token is accepted
only if it is signed with one of the issuer's keys under an allowed algorithm, names this issuer, is for
this resource (`aud`, RFC 8707), has not expired, and has a subject. The principal is issuer + subject, so
two issuers' subjects can never share a budget, and no static token name (no ':' allowed) can collide.

This server never issues tokens: it only names its authorization server in its Protected Resource
Metadata (RFC 9728), which the SDK's route serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import jwt
from mcp.server.auth.provider import AccessToken

from ..errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")  # asymmetric only: no HS*, never "none"
CLOCK_SKEW_SECONDS = 5.0
KEYS_SECONDS = 600.0  # how long the issuer's keys are trusted before they are fetched again
KEYS_MAX_AGE_SECONDS = 3600.0  # the longest keys are trusted while every refetch fails (a key may be withdrawn)
MIN_REFRESH_SECONDS = 30.0  # an unknown key id refetches the keys at most this often (no amplification)
_TIMEOUT = httpx2.Timeout(10.0)


class OAuthConfigError(ConfigError):
    """The issuer's metadata or keys cannot be used; the message says what was wrong."""


def principal_of(issuer: str, subject: str) -> str:
    return f"{issuer}#{subject}"


class JwtVerifier:
    """The SDK's TokenVerifier for JWT access tokens of `issuer`, for the resource `audience`."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
        http: httpx2.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if "none" in (a.lower() for a in algorithms) or any(a.upper().startswith("HS") for a in algorithms):
            raise OAuthConfigError(
                "APIKEY_OAUTH_ALGORITHMS: only asymmetric JWT algorithms can be allowed (no 'none', no HS*) "
                f"(got {', '.join(algorithms)!r})."
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self._http = http or httpx2.AsyncClient(timeout=_TIMEOUT, follow_redirects=False)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = self._tried_at = -float("inf")
        self._lock = anyio.Lock()
        self.clock = clock

    async def warm(self) -> int:
        """Fetch the issuer's keys now (at start); how many there are."""
        await self._key(None)
        return len(self._keys)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # not a JWT (a static token on the wrong path, or junk)
        alg = header.get("alg")
        if alg not in self.algorithms:
            log.info("refused a token signed with %r (allowed: %s)", alg, ", ".join(self.algorithms))
            return None
        key = await self._key(header.get("kid"))
        if key is None:
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            log.info("refused a token: %s", type(exc).__name__)
            return None
        return AccessToken(
            token=token,
            client_id=principal_of(self.issuer, str(claims["sub"])),
            scopes=_scopes(claims),
            expires_at=int(claims["exp"]),
            resource=self.audience,
            subject=str(claims["sub"]),
            claims={"iss": self.issuer, "client_id": claims.get("client_id") or claims.get("azp")},
        )

    async def _key(self, kid: Any) -> jwt.PyJWK | None:
        """The issuer's key `kid`. Keys older than KEYS_SECONDS, or an unknown key id, fetch the keys again,
        at most every MIN_REFRESH_SECONDS: random key ids cannot make us hammer the issuer. Keys that could not
        be fetched again for KEYS_MAX_AGE_SECONDS are trusted no more (a withdrawn key must not live on)."""
        known = self._pick(kid)
        if known is not None and self.clock() - self._fetched_at < KEYS_SECONDS:
            return known
        async with self._lock:
            if self.clock() - self._tried_at >= MIN_REFRESH_SECONDS:
                self._tried_at = self.clock()
                try:
                    self._keys = await self._fetch_keys()
                    self._fetched_at = self.clock()
                except (httpx2.HTTPError, OAuthConfigError, ValueError, jwt.PyJWTError) as exc:
                    log.warning("cannot fetch the keys of %s (keeping %d known): %s", self.issuer, len(self._keys), exc)
            if self._keys and self.clock() - self._fetched_at >= KEYS_MAX_AGE_SECONDS:
                log.error(
                    "the keys of %s could not be fetched again for %d s: trusting none of them until they can",
                    self.issuer,
                    int(KEYS_MAX_AGE_SECONDS),
                )
                self._keys = {}
        return self._pick(kid)

    def _pick(self, kid: Any) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if isinstance(kid, str) else None

    async def _fetch_keys(self) -> dict[str, jwt.PyJWK]:
        metadata = await self._metadata()
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise OAuthConfigError(f"the metadata of {self.issuer} names no jwks_uri")
        response = await self._http.get(jwks_uri)
        response.raise_for_status()
        keys = {}
        for key in jwt.PyJWKSet.from_dict(response.json()).keys:
            if key.public_key_use in (None, "sig") and key.key_id:
                keys[key.key_id] = key
        if not keys:
            raise OAuthConfigError(f"{jwks_uri} has no signing keys with a key id")
        log.info("fetched %d signing key(s) of %s", len(keys), self.issuer)
        return keys

    async def _metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata (path inserted after the host), else OpenID discovery (path appended)."""
        base = httpx2.URL(self.issuer)
        path = base.path.rstrip("/")
        candidates = [
            str(base.copy_with(path=f"/.well-known/oauth-authorization-server{path}")),
            f"{self.issuer.rstrip('/')}/.well-known/openid-configuration",
        ]
        for url in candidates:
            response = await self._http.get(url)
            if response.status_code == 404:
                continue
            response.raise_for_status()
            metadata: dict[str, Any] = response.json()
            if metadata.get("issuer") != self.issuer:  # RFC 8414 §3.3: it must be exactly the issuer asked for
                raise OAuthConfigError(f"{url} names issuer {metadata.get('issuer')!r}, not {self.issuer!r}")
            return metadata
        raise OAuthConfigError(f"{self.issuer} publishes no authorization server metadata")


def _scopes(claims: dict[str, Any]) -> list[str]:
    """`scope` (RFC 9068: space-separated) or `scp` (a list, as some issuers send)."""
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        return scope.split()
    return [s for s in scope if isinstance(s, str)] if isinstance(scope, list) else []
