"""The gateway's contract over HTTP, as the sandbox answers it: the /v1 catalogue, estimate, chat and
embeddings (charged at once), media creates (handed to the task engine) and task polls, the result files
the tasks link to, and the machine-readable documents."""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..gateway.models import (
    ChatCompletion,
    ChatRequest,
    EmbeddingList,
    EmbeddingRequest,
    EstimateRequest,
    ImageRequest,
    ModelList,
    MusicRequest,
    TaskStatus,
    VideoRequest,
    message_text,
    plan_for,
)
from . import assets, docs, pricing
from .engine import NewTask, TaskEngine
from .errors import SandboxError
from .faults import MALFORMED_REDIRECT, Faults
from .pricing import price
from .protocol import caller_key, check_max_credits, json_response, optional_caller_key, read_body
from .wallets import Wallet

MediaRequest = ImageRequest | VideoRequest | MusicRequest


class GatewayRoutes:
    """The handlers of the gateway's own endpoints, over the wallets and the task engine."""

    def __init__(
        self,
        wallets: Mapping[str, Wallet],
        engine: TaskEngine,
        faults: Faults,
        chat_charges: deque[tuple[str, int]],
    ) -> None:
        self.wallets, self.engine, self.faults, self.chat_charges = wallets, engine, faults, chat_charges

    def routes(self) -> list[Route]:
        v1 = [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/credits/estimate", self.estimate, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/images/generations", self.create_image, methods=["POST"]),
            Route("/v1/videos", self.create_video, methods=["POST"]),
            Route("/v1/music/generations", self.create_music, methods=["POST"]),
            Route("/v1/tasks/{task_id}", self.get_task, methods=["GET"]),
        ]
        documents = [Route(path, _document(name), methods=["GET"]) for name, path in docs.PATHS.items()]
        files = [Route("/sandbox/files/{task_id}/{index:int}.{ext}", self.file, methods=["GET"])]
        return v1 + documents + files

    # ------------------------------------------------------------ catalogue and estimate

    async def list_models(self, request: Request) -> Response:
        optional_caller_key(request, self.wallets)
        return json_response(ModelList(data=list(pricing.CATALOGUE.values())))

    async def estimate(self, request: Request) -> Response:
        optional_caller_key(request, self.wallets)
        body = await read_body(request, EstimateRequest)
        credits, breakdown = price(body)
        within = None if body.max_credits is None else credits <= body.max_credits
        return JSONResponse(
            {
                "model": body.model,
                "modality": body.modality,
                "credits": credits,
                "currency": "credits",
                "breakdown": breakdown,
                "within_budget": within,
            }
        )

    # ------------------------------------------------------------ chat and embeddings: charged at once

    async def chat(self, request: Request) -> Response:
        key = caller_key(request, self.wallets)
        body = await read_body(request, ChatRequest)
        info = pricing.CATALOGUE.get(body.model)
        tokens_in = sum(pricing.count_tokens(message_text(m.content)) + 4 for m in body.messages)
        max_tokens = body.max_tokens or pricing.DEFAULT_MAX_TOKENS
        estimate = EstimateRequest(model=body.model, modality="chat", input_tokens=tokens_in, output_tokens=max_tokens)
        bound, _ = price(estimate)
        check_max_credits(bound, body.max_credits)
        last = next((message_text(m.content) for m in reversed(body.messages) if m.role == "user"), "")
        reply = f"[sandbox {body.model}] You said: {last}"
        finish = "stop"
        if pricing.count_tokens(reply) > max_tokens:
            reply, finish = reply.encode()[: max_tokens * 4].decode(errors="ignore"), "length"
        tokens_out = pricing.count_tokens(reply)
        cost, _ = price(estimate.model_copy(update={"output_tokens": tokens_out}))
        self.wallets[key].charge(cost)
        self.chat_charges.append((last, cost))
        assert info is not None
        completion = {
            "id": "chatcmpl-" + secrets.token_hex(8),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": info.id,
            "credits": cost,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
            },
        }
        return json_response(ChatCompletion.model_validate(completion))

    async def embeddings(self, request: Request) -> Response:
        key = caller_key(request, self.wallets)
        body = await read_body(request, EmbeddingRequest)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t for t in texts):
            message = "input must be a non-empty string or a list of them"
            raise SandboxError(422, "invalid_request", message, param="input")
        tokens = sum(pricing.count_tokens(t) for t in texts)
        cost, _ = price(EstimateRequest(model=body.model, modality="embedding", input_tokens=tokens))
        check_max_credits(cost, body.max_credits)
        self.wallets[key].charge(cost)
        dims = body.dimensions or pricing.CATALOGUE[body.model].parameters.dimensions or 256
        data = [{"object": "embedding", "index": i, "embedding": _unit_vector(t, dims)} for i, t in enumerate(texts)]
        usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        embeddings = EmbeddingList.model_validate({"data": data, "model": body.model, "usage": usage, "credits": cost})
        return json_response(embeddings)

    # ------------------------------------------------------------ async media tasks

    async def create_image(self, request: Request) -> Response:
        return await self._create(request, "image", ImageRequest)

    async def create_video(self, request: Request) -> Response:
        return await self._create(request, "video", VideoRequest)

    async def create_music(self, request: Request) -> Response:
        return await self._create(request, "music", MusicRequest)

    async def _create(self, request: Request, modality: str, kind: type[MediaRequest]) -> Response:
        """Price the create, refuse it before any task exists if it cannot be paid, reserve, and start the task."""
        key = caller_key(request, self.wallets)
        body = await read_body(request, kind)
        if isinstance(body, VideoRequest):
            _check_video_inputs(body)
        credits, _ = price(plan_for(body))
        check_max_credits(credits, body.max_credits)  # before any task exists
        self.wallets[key].reserve(credits)
        new = NewTask(
            key=key,
            modality=modality,
            model=body.model,
            prompt=body.prompt,
            credits=credits,
            callback_url=str(body.callback_url) if body.callback_url else None,
            base_url=str(request.base_url).rstrip("/"),
            outputs=body.n if isinstance(body, ImageRequest) else 1,
            bad_link=self.faults.take_bad_link(),
        )
        return json_response(self.engine.open(new).task)

    async def get_task(self, request: Request) -> Response:
        entry = self.engine.owned(request.path_params["task_id"], caller_key(request, self.wallets))
        return json_response(self.engine.poll(entry))

    async def file(self, request: Request) -> Response:
        """A succeeded task's result file, rendered from its prompt."""
        entry = self.engine.tasks.get(request.path_params["task_id"])
        if entry is None or entry.task.status != TaskStatus.SUCCEEDED:
            raise SandboxError(404, "not_found", "No such result file")
        mime = assets.MIME_TYPES[entry.modality]
        if request.path_params["index"] >= entry.outputs or request.path_params["ext"] != assets.EXTENSIONS[mime]:
            raise SandboxError(404, "not_found", "No such result file")
        if entry.bad_link == "redirect":
            return Response(status_code=302, headers={"location": MALFORMED_REDIRECT})
        return Response(assets.render(entry.modality, entry.prompt), media_type=mime)


def _check_video_inputs(body: VideoRequest) -> None:
    """An image- or video-to-video create must bring the input it converts."""
    needs = {"image-to-video": ("image_url", body.image_url), "video-to-video": ("video_url", body.video_url)}
    if body.input_mode in needs and needs[body.input_mode][1] is None:
        field_name = needs[body.input_mode][0]
        raise SandboxError(422, "invalid_request", f"{body.input_mode} needs {field_name}", param=field_name)


def _document(name: str) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def serve(request: Request) -> Response:
        text, media_type = docs.render(name, base_url=str(request.base_url).rstrip("/"))
        return Response(text, media_type=media_type)

    return serve


def _unit_vector(text: str, dims: int) -> list[float]:
    """A stable unit vector derived from the text alone."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [rng.gauss(0, 1) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


__all__ = ["GatewayRoutes"]
