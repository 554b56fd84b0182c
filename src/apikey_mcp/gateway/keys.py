"""How the gateway key is kept: sent only to the gateway's own origin, and removed from everything the gateway
says back (answers, documents, errors), with any other secret the operator configured."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Literal

import httpx2
from pydantic import SecretStr

AuthScheme = Literal["bearer", "x-api-key"]
REDACTED = "[redacted]"


class KeyAuth(httpx2.Auth):
    """Adds the key to requests bound for the gateway's own origin, and to no other (result downloads)."""

    def __init__(self, key: SecretStr, scheme: AuthScheme, origin: httpx2.URL) -> None:
        self._key = key
        self._scheme = scheme
        self._origin = (origin.scheme, origin.host, origin.port)

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        if (request.url.scheme, request.url.host, request.url.port) == self._origin:
            secret = self._key.get_secret_value()
            if self._scheme == "bearer":
                request.headers["Authorization"] = f"Bearer {secret}"
            else:
                request.headers["x-api-key"] = secret
        yield request

    def __repr__(self) -> str:
        return f"KeyAuth(scheme={self._scheme!r}, key=**********)"


def redactor(keys: Sequence[SecretStr | None]) -> Callable[[str], str]:
    """Removes every configured secret from text taken from an answer (not every word after "Bearer": the
    gateway's docs show `Authorization: Bearer KEY` as a placeholder, which is no secret)."""
    values = {key.get_secret_value() for key in keys if key is not None and key.get_secret_value()}
    secrets = sorted(values, key=len, reverse=True)  # the longest first: no secret's tail left behind

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text

    return redact


def scrub(value: object, redact: Callable[[str], str]) -> object:
    """Every string in a parsed answer, redacted: a secret escaped in the JSON text is caught too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [scrub(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item, redact) for key, item in value.items()}
    return value
