"""GatewayClient: one pooled async HTTP client with a typed method per gateway endpoint.

Safe requests (GETs and the free estimate) are retried with backoff; a create is never retried once it
may have reached the gateway, since a second try could create and charge twice.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import anyio
import httpx2
from pydantic import BaseModel, SecretStr, ValidationError

from .. import __version__, metrics
from .constants import (
    CHAT_TIMEOUT,
    CREATE_TIMEOUT,
    DEFAULT_BASE_URL,
    DOWNLOAD_TIMEOUT,
    INITIAL_RETRY_DELAY,
    MAX_CONNECTIONS,
    MAX_RETRIES,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    READ_TIMEOUT,
    RETRY_STATUSES,
)
from .errors import (
    GatewayConnectionError,
    GatewayError,
    GatewayProtocolError,
    GatewayTimeoutError,
    GatewayUnreachableError,
    MissingApiKeyError,
    error_from_response,
    parse_retry_after,
)
from .keys import AuthScheme, KeyAuth, redactor, scrub
from .models import DOCUMENT_PATHS, ChatCompletion, Document, EmbeddingList, Estimate, ModelList, Task
from .requests import ChatRequest, EmbeddingRequest, EstimateRequest, ImageRequest, MusicRequest, VideoRequest

_T = TypeVar("_T", bound=BaseModel)
log = logging.getLogger(__name__)


class GatewayClient:
    """Typed access to the API-Key gateway. Use as an async context manager, or call aclose()."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: SecretStr | str | None = None,
        *,
        auth_scheme: AuthScheme = "bearer",
        max_retries: int = MAX_RETRIES,
        transport: httpx2.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        other_secrets: Sequence[SecretStr | None] = (),
    ) -> None:
        """`other_secrets` are removed, like the key, from all text taken from the gateway's answers (the
        operator's key and webhook secret, for a client that calls with a principal's own key)."""
        if isinstance(api_key, str):
            api_key = SecretStr(api_key) if api_key else None
        self.base_url = base_url.rstrip("/")
        self.has_key = api_key is not None
        self._redact = redactor([api_key, *other_secrets])
        self.max_retries = max_retries
        self._sleep = sleep
        origin = httpx2.URL(self.base_url)
        self._make_http = partial(
            httpx2.AsyncClient,
            base_url=self.base_url,
            auth=KeyAuth(api_key, auth_scheme, origin) if api_key else None,
            headers={"user-agent": f"apikey-mcp/{__version__}"},
            transport=transport,
            limits=httpx2.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            timeout=READ_TIMEOUT,
        )
        self._client: httpx2.AsyncClient | None = None

    @property
    def _http(self) -> httpx2.AsyncClient:
        """Built on first use: it loads the TLS trust store, which a server that is starting need not wait for."""
        if self._client is None:
            self._client = self._make_http()
        return self._client

    def require_key(self) -> None:
        """Refuse a call that needs the key when there is none (before any request, which would fail otherwise)."""
        if not self.has_key:
            raise MissingApiKeyError("No API key is configured", code="missing_api_key")

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r}, has_key={self.has_key})"

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ------------------------------------------------------------ endpoints

    async def list_models(self) -> ModelList:
        return await self._call("GET", "/v1/models", ModelList)

    async def estimate(self, request: EstimateRequest) -> Estimate:
        """Free, so safe to retry like a GET."""
        return await self._call("POST", "/v1/credits/estimate", Estimate, body=request, safe=True)

    async def chat_completion(self, request: ChatRequest) -> ChatCompletion:
        return await self._call("POST", "/v1/chat/completions", ChatCompletion, body=request, timeout=CHAT_TIMEOUT)

    async def create_embeddings(self, request: EmbeddingRequest) -> EmbeddingList:
        return await self._call("POST", "/v1/embeddings", EmbeddingList, body=request, timeout=CHAT_TIMEOUT)

    async def generate_image(self, request: ImageRequest) -> Task:
        return await self._call("POST", "/v1/images/generations", Task, body=request)

    async def generate_video(self, request: VideoRequest) -> Task:
        return await self._call("POST", "/v1/videos", Task, body=request)

    async def generate_music(self, request: MusicRequest) -> Task:
        return await self._call("POST", "/v1/music/generations", Task, body=request)

    async def get_task(self, task_id: str) -> Task:
        metrics.gateway_poll()
        return await self._call("GET", f"/v1/tasks/{_path_segment(task_id)}", Task)

    async def get_document(self, name: str) -> Document:
        """One of the machine-readable documents by name (see DOCUMENT_PATHS), as text with its type."""
        path = DOCUMENT_PATHS[name]
        response = await self._send("GET", path, safe=True, timeout=READ_TIMEOUT)
        content_type = response.headers.get("content-type", "text/plain").split(";")[0].strip()
        return Document(path=path, content_type=content_type, text=self._redact(response.text))

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int,
        progress: Callable[[int], None] | None = None,
        allow: Callable[[str], Awaitable[None]] | None = None,
    ) -> int:
        """Stream a result file to dest (written whole or not at all); returns its size in bytes. `progress`
        hears the size of every chunk as it is written; `allow` raises for a link (or hop) not to be fetched.

        Redirects (a CDN) are followed by hand, so that every hop goes through the key's origin check.
        """
        partial = dest.with_name(dest.name + ".part")
        size = 0
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if allow is not None:
                    await allow(url)
                async with self._http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    if not response.is_success:
                        await response.aread()
                        raise error_from_response(response, self._redact)
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise GatewayError(f"Result file is {declared} bytes, over the {max_bytes}-byte cap", hint=_CAP)
                    async with await anyio.open_file(partial, "wb") as out:
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > max_bytes:
                                raise GatewayError(f"Result file exceeds the {max_bytes}-byte cap", hint=_CAP)
                            await out.write(chunk)
                            if progress is not None:
                                progress(len(chunk))
                    partial.replace(dest)
                    return size
            raise GatewayError(f"Result link redirected more than {_MAX_REDIRECTS} times", hint=_CAP)
        except httpx2.TransportError as exc:
            raise GatewayConnectionError(f"Download failed: {type(exc).__name__}") from exc
        finally:
            partial.unlink(missing_ok=True)

    # ------------------------------------------------------------ plumbing

    async def _call(
        self,
        method: str,
        path: str,
        result: type[_T],
        *,
        body: BaseModel | None = None,
        safe: bool | None = None,
        timeout: httpx2.Timeout | None = None,
    ) -> _T:
        public = path in ("/v1/models", "/v1/credits/estimate")  # inferred: the docs show these without a key
        if not public:
            self.require_key()
        is_safe = method == "GET" if safe is None else safe
        if timeout is None:
            timeout = READ_TIMEOUT if is_safe else CREATE_TIMEOUT
        payload = body.model_dump(mode="json", exclude_none=True) if body is not None else None
        response = await self._send(method, path, json=payload, safe=is_safe, timeout=timeout)
        try:
            return result.model_validate(scrub(json.loads(response.content), self._redact))
        except (ValidationError, ValueError) as exc:
            text = self._redact(response.text[:_MAX_KEPT_BODY])
            raise GatewayProtocolError(
                f"Unexpected answer from {method} {path}: {_summary(exc)}; raw: {text[:300]}",
                body=text,
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            ) from None

    async def _send(
        self, method: str, path: str, *, json: object = None, safe: bool, timeout: httpx2.Timeout
    ) -> httpx2.Response:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                response = await self._http.request(method, path, json=json, timeout=timeout)
            except httpx2.TransportError as exc:
                metrics.gateway_request(_route(path), "error", time.perf_counter() - started)
                error, retryable = self._transport_error(method, path, exc, safe)
                if retryable and attempt < self.max_retries:
                    attempt += 1
                    await self._sleep(self._backoff(attempt))
                    continue
                raise error from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
            metrics.gateway_request(_route(path), str(response.status_code), elapsed_ms / 1000)
            log.debug("%s %s -> %s in %.1f ms", method, path, response.status_code, elapsed_ms)
            if response.is_success:
                return response
            if safe and response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                delay = self._retry_delay(attempt + 1, response)
                if delay is not None:
                    attempt += 1
                    status = response.status_code
                    log.info("%s %s answered %s; retry %d in %.2f s", method, path, status, attempt, delay)
                    await self._sleep(delay)
                    continue
            raise error_from_response(response, self._redact)

    def _transport_error(
        self, method: str, path: str, exc: httpx2.TransportError, safe: bool
    ) -> tuple[GatewayError, bool]:
        """The error to raise for a failed exchange, and whether trying again is safe."""
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout):
            # The request never left: a retry cannot create anything twice, whatever the method.
            return GatewayUnreachableError(f"Cannot connect to {self.base_url}: {type(exc).__name__}"), True
        if isinstance(exc, httpx2.TimeoutException):
            return GatewayTimeoutError(f"{method} {path} timed out"), safe
        return GatewayConnectionError(f"{method} {path} failed: {type(exc).__name__}"), safe

    def _backoff(self, attempt: int) -> float:
        """Doubling from INITIAL_RETRY_DELAY to MAX_RETRY_DELAY, less up to a quarter of jitter."""
        delay = min(INITIAL_RETRY_DELAY * 2 ** (attempt - 1), MAX_RETRY_DELAY)
        return float(delay * (1 - 0.25 * random.random()))

    def _retry_delay(self, attempt: int, response: httpx2.Response) -> float | None:
        """Retry-After when the gateway gives a sane one; None when it asks for longer than we wait."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is None:
            return self._backoff(attempt)
        return retry_after if retry_after <= MAX_RETRY_AFTER else None


_CAP = "Raise --max-download-bytes, or fetch the result URL yourself."
_MAX_REDIRECTS = 5
_MAX_KEPT_BODY = 10_000


def _route(path: str) -> str:
    """The path's template, a bounded label: a task's path names `{id}`, never the id itself."""
    if path.startswith("/v1/tasks/"):
        return "/v1/tasks/{id}"
    return path if path.count("/") <= 4 and len(path) <= 64 else "other"


def _path_segment(value: str) -> str:
    """A task id as one URL path segment: no slashes or dots smuggled into the path."""
    if not value or value in (".", "..") or not value.isprintable():
        raise GatewayError(
            "Task id is empty or malformed", code="invalid_request", hint="Pass the task_id a generate call returned."
        )
    return quote(value, safe="")


def _summary(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return "not JSON"
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"
