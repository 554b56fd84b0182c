"""The sandbox's model catalogue and its one price table.

Prices are deterministic and made up for the sandbox (they are not api-key.org's): video by model x
duration x resolution x input mode, images per image and size, music per second, chat and embeddings
per 1,000 tokens. Every price is a whole number of credits, rounded up, at least 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from ..gateway.models import EstimateRequest, ModelInfo, ModelParameters
from .errors import SandboxError


class PriceError(SandboxError):
    """A request the catalogue cannot price: an unknown model (404) or a bad parameter (422)."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(404 if code == "model_not_found" else 422, code, message, param=param)


def _model(id: str, modality: str, name: str, description: str, **parameters: object) -> ModelInfo:
    return ModelInfo(
        id=id,
        modality=modality,
        name=name,
        description=description,
        category=modality,
        parameters=ModelParameters.model_validate(parameters),
    )


CATALOGUE: dict[str, ModelInfo] = {
    m.id: m
    for m in [
        _model(
            "seedance-2",
            "video",
            "Seedance 2",
            "Cinematic video up to 1080p from text, an image or a video.",
            durations=[5, 6, 8, 10],
            resolutions=["480p", "720p", "1080p"],
            input_modes=["text-to-video", "image-to-video", "video-to-video"],
        ),
        _model(
            "seedance-2-fast",
            "video",
            "Seedance 2 Fast",
            "Faster, cheaper Seedance 2 for drafts, up to 720p.",
            durations=[5, 6, 8, 10],
            resolutions=["480p", "720p"],
            input_modes=["text-to-video", "image-to-video"],
        ),
        _model(
            "seedream-4",
            "image",
            "Seedream 4",
            "High-fidelity images from text and reference images.",
            sizes=["1024x1024", "1536x1024", "1024x1536", "2048x2048"],
            max_images=4,
        ),
        _model(
            "flux-schnell",
            "image",
            "FLUX.1 schnell",
            "Fast, cheap draft images.",
            sizes=["512x512", "1024x1024"],
            max_images=4,
        ),
        _model(
            "music-1",
            "music",
            "Music 1",
            "Songs and instrumentals from a text prompt.",
            min_duration=5,
            max_duration=240,
        ),
        _model(
            "gpt-4o-mini",
            "chat",
            "GPT-4o mini",
            "Small, fast chat model.",
            context_window=128_000,
            max_output_tokens=16_384,
        ),
        _model(
            "deepseek-v3",
            "chat",
            "DeepSeek V3",
            "General chat and reasoning model.",
            context_window=64_000,
            max_output_tokens=8_192,
        ),
        _model("embed-small", "embedding", "Embed small", "Text embeddings, 256 dimensions.", dimensions=256),
    ]
}

DEFAULT_DURATION = {"video": 5, "music": 30}
DEFAULT_RESOLUTION = "720p"
DEFAULT_SIZE = {"seedream-4": "1024x1024", "flux-schnell": "1024x1024"}
DEFAULT_MAX_TOKENS = 1024

# The price table (tests may change an entry to move a price).
VIDEO_PER_SECOND = {"seedance-2": 20, "seedance-2-fast": 8}
RESOLUTION_FACTOR = {"480p": 0.6, "720p": 1.0, "1080p": 1.6}
MODE_FACTOR = {"text-to-video": 1.0, "image-to-video": 1.0, "video-to-video": 1.25}
IMAGE_PER_MEGAPIXEL = {"seedream-4": 6, "flux-schnell": 2}
MUSIC_PER_SECOND = {"music-1": 1}
TOKENS_PER_1K = {"gpt-4o-mini": (1, 4), "deepseek-v3": (1, 2), "embed-small": (1, 0)}  # (input, output)


def model_info(model: str, modality: str | None = None) -> ModelInfo:
    info = CATALOGUE.get(model)
    if info is None:
        raise PriceError(f"Model '{model}' does not exist", code="model_not_found", param="model")
    if modality is not None and info.modality != modality:
        raise PriceError(f"Model '{model}' is a {info.modality} model, not {modality}", param="model")
    return info


_C = TypeVar("_C")


def _credits(amount: float) -> int:
    return max(1, math.ceil(amount - 1e-9))


def _choose(value: _C | None, allowed: Sequence[_C], default: _C, param: str, model: str) -> _C:
    chosen = default if value is None else value
    if chosen not in allowed:
        raise PriceError(f"{param} {chosen!r} is not offered by {model}; choose one of {list(allowed)}", param=param)
    return chosen


def price(request: EstimateRequest) -> tuple[int, dict[str, object]]:
    """Credits for a planned call and how they add up; raises PriceError (answered as the gateway does) for
    what cannot be priced."""
    info = model_info(request.model, request.modality)
    p = info.parameters
    if request.modality == "video":
        duration = _choose(request.duration, p.durations or [], DEFAULT_DURATION["video"], "duration", info.id)
        resolution = _choose(request.resolution, p.resolutions or [], DEFAULT_RESOLUTION, "resolution", info.id)
        mode = _choose(request.input_mode, p.input_modes or [], "text-to-video", "input_mode", info.id)
        per_second = VIDEO_PER_SECOND[info.id] * RESOLUTION_FACTOR[resolution] * MODE_FACTOR[mode]
        breakdown: dict[str, object] = {
            "duration": duration,
            "resolution": resolution,
            "input_mode": mode,
            "per_second": per_second,
        }
        return _credits(per_second * duration), breakdown
    if request.modality == "image":
        size = _choose(request.size, p.sizes or [], DEFAULT_SIZE[info.id], "size", info.id)
        n = request.n or 1
        if n > (p.max_images or 1):
            raise PriceError(f"n={n} is over {info.id}'s limit of {p.max_images} images", param="n")
        width, height = (int(side) for side in str(size).split("x"))
        per_image = _credits(IMAGE_PER_MEGAPIXEL[info.id] * width * height / 1024**2)
        return per_image * n, {"n": n, "size": size, "per_image": per_image}
    if request.modality == "music":
        duration = request.duration or DEFAULT_DURATION["music"]
        if not (p.min_duration or 0) <= duration <= (p.max_duration or duration):
            raise PriceError(f"duration must be {p.min_duration}-{p.max_duration} s for {info.id}", param="duration")
        return _credits(MUSIC_PER_SECOND[info.id] * duration), {"duration": duration, "per_second": 1}
    # chat and embedding: per 1,000 tokens in and out
    rate_in, rate_out = TOKENS_PER_1K[info.id]
    tokens_in = request.input_tokens or 0
    tokens_out = 0 if request.modality == "embedding" else (request.output_tokens or DEFAULT_MAX_TOKENS)
    cost = (tokens_in * rate_in + tokens_out * rate_out) / 1000
    return _credits(cost), {"input_tokens": tokens_in, "output_tokens": tokens_out, "per_1k": [rate_in, rate_out]}


def count_tokens(text: str) -> int:
    """The sandbox's tokenizer: a quarter of the UTF-8 bytes, at least 1. Never more than the bytes."""
    return max(1, math.ceil(len(text.encode()) / 4))
