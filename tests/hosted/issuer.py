"""A real OAuth 2.1 authorization server for the tests: oidc-provider (npm) on loopback, started by a fixture.

It runs where `node` is installed; where node is present but `npm ci --prefix tests/hosted/node` was not run,
the tests fail and say so, rather than skip in silence.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.node import NODE_DIR, node_package

CLIENTS = {"agent-a": "agent-a-secret-0123456789", "agent-b": "agent-b-secret-0123456789"}
KID = "test-key-1"


@dataclass
class Issuer:
    url: str
    other: str  # a second issuer, same signing key
    private_key: rsa.RSAPrivateKey

    def token(self, resource: str, *, client: str = "agent-a", scope: str = "apikey", issuer: str | None = None) -> str:
        """An access token for `resource` from the client-credentials grant (RFC 8707 `resource`)."""
        base = issuer or self.url
        with httpx2.Client(timeout=10) as http:
            token_endpoint = http.get(f"{base}/.well-known/openid-configuration").json()["token_endpoint"]
            data = {"grant_type": "client_credentials", "resource": resource, "scope": scope}
            response = http.post(token_endpoint, data=data, auth=(client, CLIENTS[client]))
        response.raise_for_status()
        return response.json()["access_token"]

    def resign(self, token: str, **changes: Any) -> str:
        """The same token's claims with `changes`, signed again with the issuer's own key."""
        claims = jwt.decode(token, options={"verify_signature": False}) | changes
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": KID, "typ": "at+jwt"})


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def tampered(token: str, **changes: Any) -> str:
    """The token's payload changed, its signature kept."""
    header, _, signature = token.split(".")
    return f"{header}.{b64(claims_of(token) | changes)}.{signature}"


def unsigned(token: str) -> str:
    """The token's claims under `alg: none` and no signature."""
    return f"{b64({'alg': 'none', 'typ': 'at+jwt', 'kid': KID})}.{b64(claims_of(token))}."


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    node_package("oidc-provider/package.json")  # skips without node, fails if node is there but this is not
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)) | {"kid": KID, "alg": "RS256", "use": "sig"}
    process = subprocess.Popen(
        ["node", str(NODE_DIR / "issuer.mjs"), json.dumps(jwk)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it listens, or returns "" if it died
        if not line:
            pytest.fail(f"oidc-provider did not start (exit code {process.wait(timeout=10)})")
        started = json.loads(line)
        yield Issuer(started["issuer"], started["other"], key)
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # it exits when its stdin closes
        process.stdout.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
