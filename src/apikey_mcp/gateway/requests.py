"""What we send to the gateway: the request bodies, validated strictly (an unknown field is refused, so a
typo is our bug and not a silent no-op at the gateway). `models` re-exports them beside the answers they get.
Choices the docs leave open are marked "inferred" (see shared/design/gateway-contract.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

Modality = Literal["chat", "embedding", "image", "video", "music"]
InputMode = Literal["text-to-video", "image-to-video", "video-to-video"]


class _Request(BaseModel):
    """What we send: strict, so a typo is our bug and not a silent no-op at the gateway."""

    model_config = ConfigDict(extra="forbid")


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
    """One message: sent in a request and read back in an answer's choice, so unknown fields are kept."""

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


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    dimensions: int | None = Field(default=None, ge=1)
    max_credits: int | None = Field(default=None, ge=0)  # inferred, as on chat
