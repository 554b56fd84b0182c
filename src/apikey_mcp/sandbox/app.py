"""The sandbox gateway: a Starlette app that follows the API-Key gateway's published contract.

Each key has its own wallet. Creates are priced, checked against max_credits and the wallet, reserved,
and run through pending -> running -> succeeded | failed on a configurable clock; success settles the
charge, failure refunds it, and a signed callback is POSTed when callback_url was given. Results are
small real files served by the sandbox itself. Fault knobs (latency, 5xx, 429) serve the tests and
benchmarks. Sandbox-only extras live under /sandbox/.

Time can belong to the caller: with `hold` set, a new task stays `pending` until it is moved on with
`POST /sandbox/tasks/{task_id}/advance` (`{"to": "running" | "succeeded" | "failed", "progress": 0.5}`),
so a test decides when a task ends instead of racing the task clock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import httpx2
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..gateway import webhooks
from ..gateway.models import (
    ChatCompletion,
    ChatRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorBody,
    EstimateRequest,
    ImageRequest,
    ModelList,
    MusicRequest,
    Task,
    TaskCredits,
    TaskOutput,
    TaskStatus,
    VideoRequest,
    message_text,
    plan_for,
)
from . import assets, docs, pricing
from .errors import SandboxError
from .faults import MALFORMED_LINK, MALFORMED_REDIRECT, BadLink, Faults, FaultsMiddleware

log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)
FAIL_MARKER = "[sandbox:fail]"  # a prompt containing this always fails: a deterministic failure for demos
_TASK_OBJECT = {"image": "gateway.image.task", "video": "gateway.video.task", "music": "gateway.music.task"}


@dataclass
class Wallet:
    balance: int
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass
class SandboxTask:
    task: Task
    key: str
    modality: str
    prompt: str
    reserved: int
    will_fail: bool
    callback_url: str | None
    base_url: str
    outputs: int = 1
    started: float = field(default_factory=time.monotonic)
    held: bool = False  # moved on only by /sandbox/tasks/{id}/advance, never by the clock
    ended_at: float | None = None  # unix seconds, to the microsecond: benchmarks time what follows the end
    polls: int = 0  # GET /v1/tasks/{id} of this very task (the request counters group all tasks)
    bad_link: BadLink | None = None  # succeeds with a broken result link (faults.bad_links)


class Sandbox:
    """The sandbox's state and behaviour; `app` is its ASGI face."""

    def __init__(
        self,
        keys: list[str],
        *,
        credits: int = 100_000,
        task_seconds: float = 3.0,
        failure_rate: float = 0.0,
        webhook_secret: str | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
        hold: bool = False,
    ) -> None:
        self.wallets = {key: Wallet(credits) for key in keys}
        self.task_seconds = task_seconds
        self.hold = hold  # new tasks wait for /sandbox/tasks/{id}/advance instead of the clock
        self.failure_rate = failure_rate
        self.webhook_secret = webhook_secret or "whsec_" + secrets.token_hex(16)
        self.faults = faults or Faults()
        self.tasks: dict[str, SandboxTask] = {}
        self.forgotten: dict[str, SandboxTask] = {}  # tasks dropped by `forget_tasks` (404 from then on)
        self.chat_charges: deque[tuple[str, int]] = deque(maxlen=100_000)  # (last user message, credits charged)
        self.requests: Counter[str] = Counter()  # "GET /v1/tasks/{task_id}" -> count
        self.callbacks_sent: list[dict[str, object]] = []
        self._rng = random.Random(seed)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._http: httpx2.AsyncClient | None = None
        self.app = Starlette(
            routes=self._routes(),
            middleware=[Middleware(FaultsMiddleware, sandbox=self)],
            exception_handlers={
                SandboxError: lambda request, exc: exc.response(),
                ClientDisconnect: lambda request, exc: Response(status_code=499),  # the caller gave up
            },
            lifespan=self._lifespan,
        )

    # ------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(timeout=10) as http, anyio.create_task_group() as tg:
            self._http, self._task_group = http, tg
            yield
            tg.cancel_scope.cancel()

    def _routes(self) -> list[Route]:
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
        documents = [Route(path, self._document(name), methods=["GET"]) for name, path in docs.PATHS.items()]
        extras = [
            Route("/sandbox/files/{task_id}/{index:int}.{ext}", self.file, methods=["GET"]),
            Route("/sandbox/wallet", self.wallet, methods=["GET"]),
            Route("/sandbox/tasks/{task_id}/advance", self.advance, methods=["POST"]),
            Route("/sandbox/tasks/{task_id}", self.task_times, methods=["GET"]),
            Route("/sandbox/stats", self.stats, methods=["GET"]),
            Route("/healthz", lambda request: PlainTextResponse("ok"), methods=["GET"]),
        ]
        return v1 + documents + extras

    def _key(self, request: Request) -> str:
        """The caller's key, which must be one of the sandbox's."""
        key = self._optional_key(request)
        if key is None:
            raise SandboxError(401, "invalid_api_key", "Missing API key: send Authorization: Bearer KEY")
        return key

    def _optional_key(self, request: Request) -> str | None:
        """The caller's key if it sent one (free endpoints need none); a wrong key is still refused."""
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key")
        if not key:
            return None
        if key not in self.wallets:
            raise SandboxError(401, "invalid_api_key", "Invalid API key")
        return key

    @staticmethod
    async def _body(request: Request, model: type[_M]) -> _M:
        raw = await request.body()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise SandboxError(400, "invalid_request", "Body is not valid JSON") from None
            param = ".".join(str(p) for p in first["loc"]) or None
            raise SandboxError(422, "invalid_request", f"{param}: {first['msg']}", param=param) from None

    @staticmethod
    def _price(request: EstimateRequest) -> tuple[int, dict[str, object]]:
        try:
            return pricing.price(request)
        except pricing.PriceError as exc:
            raise SandboxError(exc.status, exc.code, exc.message, param=exc.param) from None

    # ------------------------------------------------------------ catalogue and estimate

    async def list_models(self, request: Request) -> Response:
        self._optional_key(request)
        return _json(ModelList(data=list(pricing.CATALOGUE.values())))

    async def estimate(self, request: Request) -> Response:
        self._optional_key(request)
        body = await self._body(request, EstimateRequest)
        credits, breakdown = self._price(body)
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

    def _charge_now(self, key: str, cost: int) -> None:
        wallet = self.wallets[key]
        if wallet.available < cost:
            raise SandboxError(402, "insufficient_credits", "Insufficient credits")
        wallet.balance -= cost

    def _check_max_credits(self, bound: int, max_credits: int | None) -> None:
        if max_credits is not None and bound > max_credits:
            raise SandboxError(
                402,
                "max_credits_exceeded",
                f"Estimated {bound} credits exceeds max_credits {max_credits}",
                estimate=bound,
            )

    async def chat(self, request: Request) -> Response:
        key = self._key(request)
        body = await self._body(request, ChatRequest)
        info = pricing.CATALOGUE.get(body.model)
        tokens_in = sum(pricing.count_tokens(message_text(m.content)) + 4 for m in body.messages)
        max_tokens = body.max_tokens or pricing.DEFAULT_MAX_TOKENS
        estimate = EstimateRequest(model=body.model, modality="chat", input_tokens=tokens_in, output_tokens=max_tokens)
        bound, _ = self._price(estimate)
        self._check_max_credits(bound, body.max_credits)
        last = next((message_text(m.content) for m in reversed(body.messages) if m.role == "user"), "")
        reply = f"[sandbox {body.model}] You said: {last}"
        finish = "stop"
        if pricing.count_tokens(reply) > max_tokens:
            reply, finish = reply.encode()[: max_tokens * 4].decode(errors="ignore"), "length"
        tokens_out = pricing.count_tokens(reply)
        cost, _ = self._price(estimate.model_copy(update={"output_tokens": tokens_out}))
        self._charge_now(key, cost)
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
        return _json(ChatCompletion.model_validate(completion))

    async def embeddings(self, request: Request) -> Response:
        key = self._key(request)
        body = await self._body(request, EmbeddingRequest)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not t for t in texts):
            message = "input must be a non-empty string or a list of them"
            raise SandboxError(422, "invalid_request", message, param="input")
        tokens = sum(pricing.count_tokens(t) for t in texts)
        cost, _ = self._price(EstimateRequest(model=body.model, modality="embedding", input_tokens=tokens))
        self._check_max_credits(cost, body.max_credits)
        self._charge_now(key, cost)
        dims = body.dimensions or pricing.CATALOGUE[body.model].parameters.dimensions or 256
        data = [{"object": "embedding", "index": i, "embedding": _vector(t, dims)} for i, t in enumerate(texts)]
        usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        return _json(EmbeddingList.model_validate({"data": data, "model": body.model, "usage": usage, "credits": cost}))

    # ------------------------------------------------------------ async media tasks

    async def create_image(self, request: Request) -> Response:
        return await self._create(request, "image", ImageRequest)

    async def create_video(self, request: Request) -> Response:
        return await self._create(request, "video", VideoRequest)

    async def create_music(self, request: Request) -> Response:
        return await self._create(request, "music", MusicRequest)

    async def _create(
        self, request: Request, modality: str, kind: type[ImageRequest | VideoRequest | MusicRequest]
    ) -> Response:
        key = self._key(request)
        body = await self._body(request, kind)
        if isinstance(body, VideoRequest):
            needs = {"image-to-video": ("image_url", body.image_url), "video-to-video": ("video_url", body.video_url)}
            if body.input_mode in needs and needs[body.input_mode][1] is None:
                field_name = needs[body.input_mode][0]
                raise SandboxError(422, "invalid_request", f"{body.input_mode} needs {field_name}", param=field_name)
        plan = plan_for(body)
        credits, _ = self._price(plan)
        self._check_max_credits(credits, body.max_credits)  # before any task exists
        wallet = self.wallets[key]
        if wallet.available < credits:
            raise SandboxError(402, "insufficient_credits", "Insufficient credits")
        wallet.reserved += credits
        task_id = "task_" + secrets.token_hex(12)
        now = int(time.time())
        task = Task(
            task_id=task_id,
            id=task_id,
            object=_TASK_OBJECT[modality],
            status=TaskStatus.PENDING,
            model=body.model,
            created_at=now,
            updated_at=now,
            progress=0.0,
            credits=TaskCredits(reserved=credits),
        )
        will_fail = FAIL_MARKER in body.prompt or self._rng.random() < self.failure_rate
        callback = str(body.callback_url) if body.callback_url else None
        base_url = str(request.base_url).rstrip("/")
        outputs = body.n if isinstance(body, ImageRequest) else 1
        entry = SandboxTask(task, key, modality, body.prompt, credits, will_fail, callback, base_url, outputs)
        entry.held = self.hold
        if self.faults.bad_links:
            entry.bad_link = self.faults.bad_links.popleft()
        self.tasks[task_id] = entry
        if not entry.held:
            self._spawn(self._run, entry)
        return _json(task, status=200)

    def _spawn(self, func: Callable[[SandboxTask], Coroutine[Any, Any, None]], entry: SandboxTask) -> None:
        assert self._task_group is not None, "the sandbox app must run with its lifespan"
        self._task_group.start_soon(func, entry)

    async def _run(self, entry: SandboxTask) -> None:
        """The task's life on the clock: pending for a fifth of its time, then running, then its end."""
        await anyio.sleep(self.task_seconds * 0.2)
        if entry.task.status == TaskStatus.PENDING:  # unless it was advanced meanwhile
            self._start(entry)
        await anyio.sleep(self.task_seconds * 0.8)
        if not entry.task.is_terminal and entry.task.task_id in self.tasks:  # unless forgotten meanwhile
            await self._end(entry)

    def _start(self, entry: SandboxTask) -> None:
        entry.task.status = TaskStatus.RUNNING
        entry.task.updated_at = int(time.time())

    async def _end(self, entry: SandboxTask) -> None:
        self._finish(entry)
        if entry.callback_url:
            await self._send_callback(entry)

    def _finish(self, entry: SandboxTask) -> None:
        """Settle the charge on success, refund it on failure: the wallet's reservation ends either way."""
        wallet = self.wallets[entry.key]
        wallet.reserved -= entry.reserved
        entry.ended_at = time.time()
        update: dict[str, object] = {"updated_at": int(entry.ended_at)}
        if entry.will_fail:
            update |= {
                "status": TaskStatus.FAILED,
                "progress": None,
                "credits": TaskCredits(reserved=0, charged=0, refunded=entry.reserved),
                "error": ErrorBody(message="Generation failed upstream; credits refunded", code="upstream_error"),
            }
        else:
            wallet.balance -= entry.reserved
            mime = assets.MIME_TYPES[entry.modality]
            base = f"{entry.base_url}/sandbox/files/{entry.task.task_id}"
            urls = [f"{base}/{i}.{assets.EXTENSIONS[mime]}" for i in range(entry.outputs)]
            if entry.bad_link == "link":
                urls = [MALFORMED_LINK] * entry.outputs
            update |= {
                "status": TaskStatus.SUCCEEDED,
                "progress": 1.0,
                "credits": TaskCredits(reserved=0, charged=entry.reserved),
                "outputs": [TaskOutput(url=url, mime_type=mime) for url in urls],
            }
        entry.task = entry.task.model_copy(update=update)

    async def _send_callback(self, entry: SandboxTask) -> None:
        event = webhooks.EVENT_COMPLETED if entry.task.status == TaskStatus.SUCCEEDED else webhooks.EVENT_FAILED
        body = entry.task.model_dump_json(exclude_none=True).encode()
        assert self._http is not None and entry.callback_url is not None
        for attempt in range(3):
            headers = webhooks.signed_headers(self.webhook_secret, event, entry.task.task_id, body)
            try:
                response = await self._http.post(entry.callback_url, content=body, headers=headers)
                self.callbacks_sent.append({"task_id": entry.task.task_id, "status": response.status_code})
                if response.status_code < 500:
                    return
            except Exception as exc:  # a bad callback URL must not stop the sandbox's task clock
                log.warning("callback for %s failed: %s", entry.task.task_id, type(exc).__name__)
            await anyio.sleep(0.5 * 2**attempt)

    async def get_task(self, request: Request) -> Response:
        key = self._key(request)
        entry = self.tasks.get(request.path_params["task_id"])
        if entry is None or entry.key != key:
            raise SandboxError(404, "task_not_found", f"Task '{request.path_params['task_id']}' was not found")
        entry.polls += 1
        task = entry.task
        if task.status == TaskStatus.RUNNING and not entry.held:
            elapsed = (time.monotonic() - entry.started) / max(self.task_seconds, 1e-9)
            task.progress = round(min(0.99, max(0.0, elapsed)), 3)
        return _json(task)

    async def file(self, request: Request) -> Response:
        entry = self.tasks.get(request.path_params["task_id"])
        if entry is None or entry.task.status != TaskStatus.SUCCEEDED:
            raise SandboxError(404, "not_found", "No such result file")
        mime = assets.MIME_TYPES[entry.modality]
        if request.path_params["index"] >= entry.outputs or request.path_params["ext"] != assets.EXTENSIONS[mime]:
            raise SandboxError(404, "not_found", "No such result file")
        if entry.bad_link == "redirect":
            return Response(status_code=302, headers={"location": MALFORMED_REDIRECT})
        return Response(assets.render(entry.modality, entry.prompt), media_type=mime)

    # ------------------------------------------------------------ documents and sandbox extras

    def _document(self, name: str) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def serve(request: Request) -> Response:
            text, media_type = docs.render(name, base_url=str(request.base_url).rstrip("/"))
            return Response(text, media_type=media_type)

        return serve

    async def advance(self, request: Request) -> Response:
        """Move a task on now: to `running` (with an optional `progress`), `succeeded` or `failed`."""
        key = self._key(request)
        entry = self.tasks.get(request.path_params["task_id"])
        if entry is None or entry.key != key:
            raise SandboxError(404, "task_not_found", f"Task '{request.path_params['task_id']}' was not found")
        step = await self._body(request, Advance)
        if entry.task.is_terminal:
            raise SandboxError(409, "task_finished", f"Task '{entry.task.task_id}' already {entry.task.status}")
        if step.to == "running":
            self._start(entry)
            if step.progress is not None:
                entry.task.progress = step.progress
        else:
            entry.will_fail = step.to == "failed"
            self._finish(entry)
            if entry.callback_url:
                self._spawn(self._send_callback, entry)
        return _json(entry.task)

    async def task_times(self, request: Request) -> Response:
        """When a task ended, exactly (unix seconds): not part of the gateway's contract, and not counted as a poll."""
        key = self._key(request)
        entry = self.tasks.get(request.path_params["task_id"])
        if entry is None or entry.key != key:
            raise SandboxError(404, "task_not_found", f"Task '{request.path_params['task_id']}' was not found")
        return JSONResponse({"status": str(entry.task.status), "ended_at": entry.ended_at})

    def forget_tasks(self) -> list[str]:
        """Fault: the gateway loses every task it has (each is 404 from now on); an unfinished one's hold is
        refunded, a finished one's charge stays. Returns the ids forgotten."""
        for entry in self.tasks.values():
            if not entry.task.is_terminal:
                self.wallets[entry.key].reserved -= entry.reserved
        ids = list(self.tasks)
        self.forgotten.update(self.tasks)
        self.tasks.clear()
        return ids

    def charged(self, key: str | None = None) -> int:
        """Credits charged for tasks that succeeded (forgotten ones included), for `key` or every key."""
        entries = [*self.tasks.values(), *self.forgotten.values()]
        return sum(e.reserved for e in entries if e.task.status == TaskStatus.SUCCEEDED and key in (None, e.key))

    async def wallet(self, request: Request) -> Response:
        wallet = self.wallets[self._key(request)]
        return JSONResponse({"balance": wallet.balance, "reserved": wallet.reserved, "available": wallet.available})

    async def stats(self, request: Request) -> Response:
        self._key(request)
        return JSONResponse({"requests": dict(self.requests), "tasks": len(self.tasks)})


class Advance(BaseModel):
    """The body of POST /sandbox/tasks/{task_id}/advance."""

    model_config = ConfigDict(extra="forbid")
    to: Literal["running", "succeeded", "failed"] = "succeeded"
    progress: float | None = Field(default=None, ge=0, le=1)


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(exclude_none=True), status_code=status, media_type="application/json")


def _vector(text: str, dims: int) -> list[float]:
    """A stable unit vector derived from the text alone."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [rng.gauss(0, 1) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


__all__ = ["FAIL_MARKER", "Faults", "Sandbox", "SandboxError", "Wallet"]
