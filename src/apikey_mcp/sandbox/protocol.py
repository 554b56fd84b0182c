"""The gateway's request conventions as the sandbox applies them: who is calling (the key), what was sent (a
JSON body validated against the gateway's own models), whether it fits max_credits, and a model answered as
JSON; every refusal is a SandboxError, answered in the gateway's envelope."""

from __future__ import annotations

from collections.abc import Container
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .errors import SandboxError

Body = TypeVar("Body", bound=BaseModel)


def caller_key(request: Request, keys: Container[str]) -> str:
    """The caller's key, which must be one of the sandbox's."""
    key = optional_caller_key(request, keys)
    if key is None:
        raise SandboxError(401, "invalid_api_key", "Missing API key: send Authorization: Bearer KEY")
    return key


def optional_caller_key(request: Request, keys: Container[str]) -> str | None:
    """The caller's key if it sent one (free endpoints need none); a wrong key is still refused."""
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key")
    if not key:
        return None
    if key not in keys:
        raise SandboxError(401, "invalid_api_key", "Invalid API key")
    return key


async def read_body(request: Request, model: type[Body]) -> Body:
    """The request's JSON body as `model`; a bad body is refused as the gateway does (400 or 422)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise SandboxError(400, "invalid_request", "Body is not valid JSON") from None
        param = ".".join(str(p) for p in first["loc"]) or None
        raise SandboxError(422, "invalid_request", f"{param}: {first['msg']}", param=param) from None


def check_max_credits(bound: int, max_credits: int | None) -> None:
    """Refuse a call whose worst case exceeds the caller's own `max_credits`."""
    if max_credits is not None and bound > max_credits:
        raise SandboxError(
            402,
            "max_credits_exceeded",
            f"Estimated {bound} credits exceeds max_credits {max_credits}",
            estimate=bound,
        )


def json_response(model: BaseModel, status: int = 200) -> Response:
    """A gateway model as the gateway sends it: JSON without the fields that are None."""
    return Response(model.model_dump_json(exclude_none=True), status_code=status, media_type="application/json")


__all__ = ["caller_key", "check_max_credits", "json_response", "optional_caller_key", "read_body"]
