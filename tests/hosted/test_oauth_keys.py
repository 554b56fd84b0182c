"""The OAuth verifier's key handling, against a small issuer of our own that counts what it is asked."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apikey_mcp.hosted.oauth import KEYS_MAX_AGE_SECONDS, KEYS_SECONDS, JwtVerifier, OAuthConfigError
from apikey_mcp.sandbox import BackgroundServer

AUDIENCE = "https://mcp.example/mcp"


class CountingIssuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.asked: Counter[str] = Counter()
        self.claimed_issuer: str | None = None  # what the metadata says; None: the truth
        self.down = False  # the keys cannot be fetched (503)
        self.server = BackgroundServer.for_url(self._app)

    def _app(self, url: str) -> Starlette:
        self.url = url

        async def metadata(request: Request) -> JSONResponse:
            self.asked["metadata"] += 1
            return JSONResponse({"issuer": self.claimed_issuer or self.url, "jwks_uri": f"{self.url}/jwks"})

        async def jwks(request: Request) -> JSONResponse:
            self.asked["jwks"] += 1
            if self.down:
                return JSONResponse({"error": "unavailable"}, status_code=503)
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return JSONResponse({"keys": [public | {"kid": "k1", "use": "sig", "alg": "RS256"}]})

        return Starlette(routes=[Route("/.well-known/oauth-authorization-server", metadata), Route("/jwks", jwks)])

    def token(self, kid: str = "k1", **claims: object) -> str:
        now = int(time.time())
        body = {"iss": self.url, "aud": AUDIENCE, "sub": "someone", "exp": now + 300, "iat": now, "scope": "apikey"}
        return jwt.encode(body | claims, self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def counting() -> Iterator[CountingIssuer]:
    issuer = CountingIssuer()
    with issuer.server:
        yield issuer


async def test_keys_are_fetched_once_and_unknown_key_ids_cannot_make_us_hammer_the_issuer(
    counting: CountingIssuer,
) -> None:
    verifier = JwtVerifier(counting.url, AUDIENCE)
    try:
        accepted = [await verifier.verify_token(counting.token()) for _ in range(20)]
        unknown = [await verifier.verify_token(counting.token(kid=f"random-{i}")) for i in range(20)]
    finally:
        await verifier.aclose()
    assert all(a is not None and a.client_id == f"{counting.url}#someone" for a in accepted)
    assert all(u is None for u in unknown)
    assert counting.asked == {"metadata": 1, "jwks": 1}


async def test_metadata_that_names_another_issuer_is_not_trusted(counting: CountingIssuer) -> None:
    counting.claimed_issuer = "https://impostor.example"
    verifier = JwtVerifier(counting.url, AUDIENCE)
    try:
        refused = await verifier.verify_token(counting.token())
    finally:
        await verifier.aclose()
    assert refused is None and counting.asked["jwks"] == 0


def test_symmetric_and_none_algorithms_cannot_be_allowed() -> None:
    for algorithms in (("RS256", "HS256"), ("none",)):
        with pytest.raises(OAuthConfigError):
            JwtVerifier("https://issuer.example", AUDIENCE, algorithms=algorithms)


async def test_keys_are_trusted_no_longer_than_their_maximum_age_while_refetches_fail(
    counting: CountingIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    verifier = JwtVerifier(counting.url, AUDIENCE, clock=lambda: now[0])
    try:
        fresh = await verifier.verify_token(counting.token())
        counting.down = True  # from now on every refetch fails (the issuer may have withdrawn the key)
        now[0] = KEYS_SECONDS + 1
        stale = await verifier.verify_token(counting.token())  # a refetch fails: still within the maximum age
        now[0] = KEYS_MAX_AGE_SECONDS + 1
        expired = await verifier.verify_token(counting.token())
        counting.down = False
        now[0] += 29
        too_soon = await verifier.verify_token(counting.token())  # refetches stay at most one per 30 s
        now[0] += 2
        back = await verifier.verify_token(counting.token())
    finally:
        await verifier.aclose()
    assert fresh is not None and stale is not None and expired is None and too_soon is None and back is not None
    assert counting.asked["jwks"] == 4  # the first fetch, two that failed, and the one that worked again
    assert "trusting none of them" in caplog.text
