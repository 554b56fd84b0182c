"""Signing and verifying the gateway's callback events: hex HMAC-SHA256 of `timestamp + "." + body`.

The sandbox signs with it; the hosted server's receiver verifies with it. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from .errors import GatewayError

EVENT_HEADER = "x-api-key-event"
TASK_ID_HEADER = "x-api-key-task-id"
TIMESTAMP_HEADER = "x-api-key-timestamp"
SIGNATURE_HEADER = "x-api-key-signature"
EVENT_COMPLETED = "gateway.task.completed"
EVENT_FAILED = "gateway.task.failed"  # inferred: the docs name only the completed event
DEFAULT_TOLERANCE = 300.0


class SignatureError(GatewayError):
    """A callback that must not be trusted; the message says why, never the secret."""

    hint = ""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, event: str, task_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        EVENT_HEADER: event,
        TASK_ID_HEADER: task_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a callback's signature and freshness; returns its timestamp, raises SignatureError if untrusted."""
    timestamp_text = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not timestamp_text or not signature:
        raise SignatureError("missing signature or timestamp header")
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise SignatureError("timestamp is not a whole number of seconds") from None
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise SignatureError("signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"timestamp is more than {tolerance:g} s from now")
    return timestamp


# Our callback URLs carry the reservation id (`r`), so that a callback can tie up a create whose answer was lost.
# The gateway's signature covers the body, not our URL, so the reference is authenticated by us: `m` is an HMAC
# of the id under a key derived from the webhook secret (the same on every replica). A reference without a
# valid `m` is ignored: a callback can then update only a task we know, never claim another reservation.
RESERVATION_PARAM, REFERENCE_MAC_PARAM = "r", "m"


def reference_mac(secret: str, reservation_id: str) -> str:
    key = hmac.new(secret.encode(), b"apikey-mcp callback reference", hashlib.sha256).digest()
    return hmac.new(key, reservation_id.encode(), hashlib.sha256).hexdigest()[:32]


def callback_url(public_url: str, reservation_id: str, secret: str | None) -> str:
    """Our receiver's URL for one create, with the reservation id and (given the secret) its MAC."""
    url = f"{public_url.rstrip('/')}/webhooks/api-key?{RESERVATION_PARAM}={reservation_id}"
    return f"{url}&{REFERENCE_MAC_PARAM}={reference_mac(secret, reservation_id)}" if secret else url


def verified_reference(secret: str, reservation_id: str | None, mac: str | None) -> str | None:
    """The reservation id from a callback URL if its MAC is ours; None otherwise."""
    if not reservation_id or not mac:
        return None
    return reservation_id if hmac.compare_digest(reference_mac(secret, reservation_id), mac.strip().lower()) else None
