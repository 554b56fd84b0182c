"""The gateway layer: typed HTTP access to api-key.org. Knows HTTP, nothing of MCP or budgets."""

from .client import GatewayClient
from .errors import (
    AuthenticationError,
    GatewayConnectionError,
    GatewayError,
    GatewayProtocolError,
    GatewayStatusError,
    GatewayTimeoutError,
    GatewayUnreachableError,
    InsufficientCreditsError,
    InvalidRequestError,
    MaxCreditsExceededError,
    MissingApiKeyError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
)

__all__ = [
    "AuthenticationError",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayError",
    "GatewayProtocolError",
    "GatewayStatusError",
    "GatewayTimeoutError",
    "GatewayUnreachableError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "MaxCreditsExceededError",
    "MissingApiKeyError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServerError",
]
