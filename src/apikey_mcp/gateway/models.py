"""Pydantic models of the gateway's contract: the one place it lives. This module holds what we receive; the
request bodies we send are in `requests` and re-exported here, so `gateway.models` names the whole contract.

Client and sandbox both use these, so they cannot drift apart. What we send is validated strictly
(unknown fields are refused); what we receive is parsed permissively (unknown fields are kept, an unknown
task status stays a string), because the real gateway may answer with more than its docs say.
Choices the docs leave open are marked "inferred" (see shared/design/gateway-contract.md).
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from .requests import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EstimateRequest,
    ImageRequest,
    InputMode,
    Modality,
    MusicRequest,
    VideoRequest,
    message_text,
    plan_for,
)

__all__ = [
    "DOCUMENT_PATHS",
    "MAX_CREDITS",
    "TERMINAL_STATUSES",
    "ChatChoice",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "Credits",
    "Document",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "ErrorBody",
    "ErrorEnvelope",
    "Estimate",
    "EstimateRequest",
    "ImageRequest",
    "InputMode",
    "Modality",
    "ModelInfo",
    "ModelList",
    "ModelParameters",
    "MusicRequest",
    "Task",
    "TaskCredits",
    "TaskOutput",
    "TaskStatus",
    "Timestamp",
    "Usage",
    "VideoRequest",
    "message_text",
    "plan_for",
]

log = logging.getLogger(__name__)


MAX_CREDITS = 10**15  # more than any wallet holds: a larger (or infinite) number is a broken answer


def _whole_credits(value: Any) -> Any:
    """Credits are whole numbers to us; a fractional charge is rounded up, so the ledger never under-counts.
    A number that is not finite or beyond any wallet (1e400) is a validation error, not a crash."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not (-MAX_CREDITS <= value <= MAX_CREDITS):
        raise ValueError(f"credits must be a finite number of at most {MAX_CREDITS}")
    if isinstance(value, float):
        value = math.ceil(value - 1e-9)
    return max(0, value) if isinstance(value, int) else value


def _fraction(value: Any) -> Any:
    """Progress as 0..1: a percentage is scaled down, anything else unreadable is dropped."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= 1:
            return value
        if 1 < value <= 100:
            return value / 100
    return None


Credits = Annotated[int, BeforeValidator(_whole_credits)]
Timestamp = int | float | str | None  # unix seconds in our sandbox; whatever the gateway sends is kept


class _Response(BaseModel):
    """What we receive: permissive, so a new gateway field never breaks a call."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- errors


class ErrorBody(_Response):
    message: str
    type: str = "gateway_error"
    code: str | None = None
    param: str | None = None  # inferred: names the bad field on invalid_request


class ErrorEnvelope(_Response):
    error: ErrorBody


# ---------------------------------------------------------------- models catalogue


class ModelParameters(_Response):
    """What a model accepts (inferred shape); only the keys that apply to its modality are set.

    A catalogue entry we cannot read must not break every paid call (they all check the catalogue), so a
    parameters object that does not fit this shape is kept as it came, unvalidated, with a warning.
    """

    durations: list[int | float] | None = None
    resolutions: list[str] | None = None
    input_modes: list[str] | None = None
    sizes: list[str] | None = None
    max_images: int | None = None
    min_duration: int | None = None
    max_duration: int | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    dimensions: int | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _lenient(cls, value: Any, handler: ModelWrapValidatorHandler[ModelParameters]) -> ModelParameters:
        try:
            return handler(value)
        except ValidationError:
            log.warning("model parameters in an unexpected shape were kept unvalidated: %.200r", value)
            return cls.model_construct(**value) if isinstance(value, dict) else cls()


class ModelInfo(_Response):
    id: str
    object: str = "model"
    modality: str
    name: str | None = None
    description: str | None = None
    category: str | None = None
    parameters: ModelParameters = Field(default_factory=ModelParameters)


class ModelList(_Response):
    object: str = "list"
    data: list[ModelInfo]


# ---------------------------------------------------------------- credits estimate


class Estimate(_Response):
    model: str
    modality: str
    credits: Credits
    currency: str = "credits"
    breakdown: dict[str, Any] | None = None
    within_budget: bool | None = None


# ---------------------------------------------------------------- async media tasks


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# Synonyms other gateways use; mapped so that "completed" never looks like a task still running.
_STATUS_SYNONYMS = {
    "queued": TaskStatus.PENDING,
    "created": TaskStatus.PENDING,
    "submitted": TaskStatus.PENDING,
    "processing": TaskStatus.RUNNING,
    "in_progress": TaskStatus.RUNNING,
    "completed": TaskStatus.SUCCEEDED,
    "complete": TaskStatus.SUCCEEDED,
    "success": TaskStatus.SUCCEEDED,
    "error": TaskStatus.FAILED,
    "cancelled": TaskStatus.FAILED,
    "canceled": TaskStatus.FAILED,
    "expired": TaskStatus.FAILED,
}
TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})


def _status(value: Any) -> Any:
    """Known statuses and synonyms become a TaskStatus; an unknown one is kept as its string."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        try:
            return TaskStatus(lowered)
        except ValueError:
            return _STATUS_SYNONYMS.get(lowered, value)
    return value


def _credits_object(value: Any) -> Any:
    """A bare number for a task's credits is read as its charge (inferred)."""
    return {"charged": value} if isinstance(value, int | float) and not isinstance(value, bool) else value


def _error_object(value: Any) -> Any:
    """An error given as plain text becomes the envelope's shape."""
    return {"message": value} if isinstance(value, str) else value


class TaskCredits(_Response):
    reserved: Credits | None = None
    charged: Credits | None = None
    refunded: Credits | None = None


class TaskOutput(_Response):
    url: str | None = None
    mime_type: str | None = None


class Task(_Response):
    """A task as polled. Only task_id and status must be readable: the rest is informative and lenient,
    since an unreadable answer after a create would leave a paid task untracked."""

    task_id: str
    id: str | None = None
    object: str | None = None
    status: Annotated[TaskStatus | str, BeforeValidator(_status)]
    model: str | None = None
    created_at: Timestamp = None
    updated_at: Timestamp = None
    progress: Annotated[float | None, BeforeValidator(_fraction)] = None
    credits: Annotated[TaskCredits | None, BeforeValidator(_credits_object)] = None
    outputs: list[TaskOutput] = Field(default_factory=list)
    error: Annotated[ErrorBody | None, BeforeValidator(_error_object)] = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


# ---------------------------------------------------------------- chat and embeddings (OpenAI shapes)


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatChoice(_Response):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(_Response):
    id: str
    object: str = "chat.completion"
    created: int | None = None
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class Embedding(_Response):
    object: str = "embedding"
    index: int
    embedding: list[float]


class EmbeddingList(_Response):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: Usage | None = None


# ---------------------------------------------------------------- machine-readable documents


class Document(BaseModel):
    """A gateway document fetched as text (llms.txt, auth.md, openapi.json, ...)."""

    path: str
    content_type: str
    text: str


DOCUMENT_PATHS: dict[str, str] = {
    "llms.txt": "/llms.txt",
    "auth.md": "/auth.md",
    "openapi.json": "/openapi.json",
    "index.md": "/api-docs/index.md",
    "api-catalog": "/.well-known/api-catalog",
}
