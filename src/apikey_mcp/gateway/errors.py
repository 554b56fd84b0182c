"""One small hierarchy for everything the gateway can refuse, built in one place from its error envelope.

Every error carries the gateway's message and code, the HTTP status, and a one-line hint of what to do
next, so the layers above can hand it to an agent as it is. No error ever holds the API key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2

from .models import ErrorEnvelope


class GatewayError(Exception):
    """Root of every gateway failure."""

    hint = "Try again later; if it persists, check the gateway status."

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
        request_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param
        self.request_id = request_id
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        where = f" (field: {self.param})" if self.param else ""
        return f"{self.message}{where}. {self.hint}" if self.hint else f"{self.message}{where}"


class GatewayConnectionError(GatewayError):
    """The gateway could not be reached, or the connection broke."""

    hint = "Check the base URL and the network, then try again."


class GatewayUnreachableError(GatewayConnectionError):
    """No connection could be opened: the request never left, so nothing was created or charged."""


class GatewayTimeoutError(GatewayConnectionError):
    hint = "The gateway did not answer in time; try again."


class GatewayProtocolError(GatewayError):
    """The gateway answered something we could not understand; `body` keeps its text (key redacted)."""

    hint = "The gateway's answer did not match its contract; report it with the request id if any."

    def __init__(self, message: str, *, body: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.body = body


class GatewayStatusError(GatewayError):
    """The gateway answered with an error status."""


class MissingApiKeyError(GatewayStatusError):
    hint = (
        "Set APIKEY_API_KEY (or pass --api-key), or try everything with no account on the sandbox: --sandbox, "
        "APIKEY_SANDBOX=true, or the Sandbox switch of the Desktop Extension."
    )


class AuthenticationError(GatewayStatusError):
    hint = "Check the API key: set APIKEY_API_KEY to a valid key from your api-key.org dashboard."


class PermissionDeniedError(GatewayStatusError):
    hint = "This key may not use that model or is not allowed from this IP; check the key's limits."


class NotFoundError(GatewayStatusError):
    hint = "Check the id: list_models shows the models, and task ids come from a generate call."


class InvalidRequestError(GatewayStatusError):
    hint = "Fix the named field (list_models shows what each model accepts) and try again."


class InsufficientCreditsError(GatewayStatusError):
    hint = "The account's wallet cannot cover this; top it up, or choose a cheaper model or a shorter job."


class MaxCreditsExceededError(GatewayStatusError):
    """The estimate is above the max_credits sent: refused before any task was created."""

    hint = "Nothing was created or charged. Choose a cheaper job, or raise max_credits within your budget."

    def __init__(self, message: str, *, estimate: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.estimate = estimate


class RateLimitedError(GatewayStatusError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        wait = f"{retry_after:g} s" if retry_after is not None else "a moment"
        self.hint = f"Rate limited: wait {wait} and try again."


class ServerError(GatewayStatusError):
    hint = "The gateway failed on its side; try again shortly."


_BY_CODE: dict[str, type[GatewayStatusError]] = {
    "invalid_api_key": AuthenticationError,
    "authentication_error": AuthenticationError,
    "unauthorized": AuthenticationError,
    "permission_denied": PermissionDeniedError,
    "forbidden": PermissionDeniedError,
    "model_not_found": NotFoundError,
    "task_not_found": NotFoundError,
    "not_found": NotFoundError,
    "invalid_request": InvalidRequestError,
    "invalid_request_error": InvalidRequestError,
    "insufficient_credits": InsufficientCreditsError,
    "max_credits_exceeded": MaxCreditsExceededError,
    "rate_limited": RateLimitedError,
    "rate_limit_exceeded": RateLimitedError,
    "server_error": ServerError,
    "upstream_error": ServerError,
}
_BY_STATUS: dict[int, type[GatewayStatusError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidRequestError,
    429: RateLimitedError,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from_response(response: httpx2.Response, redact: Callable[[str], str] = str) -> GatewayStatusError:
    """The one place an error answer becomes an exception: by the gateway's code first, then by status.

    `redact` cleans text taken from the answer: a misbehaving proxy may echo the request's headers.
    """
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    try:
        body = ErrorEnvelope.model_validate_json(response.content).error
        message, code, param, extra = body.message, body.code, body.param, body.model_extra or {}
    except ValueError:
        message, code, param, extra = (response.text[:300].strip() or response.reason_phrase), None, None, {}
    message = redact(message)
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or (ServerError if status >= 500 else GatewayStatusError)
    kwargs: dict[str, Any] = {"code": code, "status": status, "param": param, "request_id": request_id}
    if cls is RateLimitedError:
        kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
    if cls is MaxCreditsExceededError:
        estimate = extra.get("estimate")
        kwargs["estimate"] = estimate if isinstance(estimate, int) else None
    return cls(message, **kwargs)
