"""Pydantic models of the gateway's requests and responses: the one place the contract lives.

Client and sandbox both use these, so they cannot drift apart. What we send is validated strictly
(unknown fields are refused); what we receive is parsed permissively (unknown fields are kept, an unknown
task status stays a string), because the real gateway may answer with more than its docs say.
Choices the docs leave open are marked "inferred" (see shared/design/gateway-contract.md).
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

log = logging.getLogger(__name__)
Modality = Literal["chat", "embedding", "image", "video", "music"]
InputMode = Literal["text-to-video", "image-to-video", "video-to-video"]


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


class _Request(BaseModel):
    """What we send: strict, so a typo is our bug and not a silent no-op at the gateway."""

    model_config = ConfigDict(extra="forbid")


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


class EstimateRequest(_Request):
    model: str = Field(min_length=1)
    modality: Modality
    duration: int | None = Field(default=None, gt=0, description="Seconds (video, music).")
    resolution: str | None = None
    input_mode: InputMode | None = None
    n: int | None = Field(default=None, ge=1, description="Number of images.")
    size: str | None = None
    input_tokens: int | None = Field(default=None, ge=0, description="Chat / embeddings: tokens in (inferred).")
    output_tokens: int | None = Field(default=None, ge=0, description="Chat: tokens out (inferred).")
    max_credits: int | None = Field(default=None, ge=0)


class Estimate(_Response):
    model: str
    modality: str
    credits: Credits
    currency: str = "credits"
    breakdown: dict[str, Any] | None = None
    within_budget: bool | None = None


# ---------------------------------------------------------------- async media tasks


class _TaskCreate(_Request):
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    max_credits: int | None = Field(default=None, ge=0)
    callback_url: HttpUrl | None = None


class ImageRequest(_TaskCreate):
    n: int = Field(default=1, ge=1, le=8)
    size: str | None = None
    image_urls: list[HttpUrl] | None = Field(default=None, description="Reference images (inferred).")


class VideoRequest(_TaskCreate):
    duration: int | None = Field(default=None, gt=0)
    resolution: str | None = None
    input_mode: InputMode = "text-to-video"
    image_url: HttpUrl | None = None
    video_url: HttpUrl | None = None


class MusicRequest(_TaskCreate):
    duration: int | None = Field(default=None, gt=0)
    instrumental: bool | None = None


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
        if lowered in TaskStatus._value2member_map_:
            return TaskStatus(lowered)
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


def plan_for(request: ImageRequest | VideoRequest | MusicRequest) -> EstimateRequest:
    """The estimate request that prices a create: the same parameters, one contract for client and sandbox."""
    if isinstance(request, ImageRequest):
        return EstimateRequest(model=request.model, modality="image", n=request.n, size=request.size)
    if isinstance(request, VideoRequest):
        return EstimateRequest(
            model=request.model,
            modality="video",
            duration=request.duration,
            resolution=request.resolution,
            input_mode=request.input_mode,
        )
    return EstimateRequest(model=request.model, modality="music", duration=request.duration)


# ---------------------------------------------------------------- chat and embeddings (OpenAI shapes)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message, whether a plain string or OpenAI-style content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ChatRequest(_Request):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    max_credits: int | None = Field(default=None, ge=0)  # inferred: honoured as on task bodies


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


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    dimensions: int | None = Field(default=None, ge=1)
    max_credits: int | None = Field(default=None, ge=0)  # inferred, as on chat


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
