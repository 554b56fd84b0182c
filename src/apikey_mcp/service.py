"""What the tools do, without MCP: the paid-call flow, polling, the catalogue and the docs.

Every paid call goes estimate -> reserve in the ledger store (or refuse, sending nothing) -> create with
max_credits equal to the reservation -> tie the reservation to the task -> settle or release when it ends.
Each failure is sorted by one question, "may the request have reached the gateway?": before the create
is sent, the hold is given back; once it may have been, the hold stays counted until the gateway's
answer, a poll, a callback or the operator closes it. The create and what follows are shielded from
cancellation, so a created task id is never lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import httpx2
from pydantic import HttpUrl, ValidationError

from .budget import Ledger, LedgerUnavailableError, Reservation
from .config import Settings
from .downloads import save_outputs
from .gateway import (
    GatewayClient,
    GatewayConnectionError,
    GatewayError,
    GatewayProtocolError,
    GatewayUnreachableError,
    ServerError,
)
from .gateway.models import (
    MAX_CREDITS,
    ChatCompletion,
    ChatRequest,
    Document,
    EmbeddingList,
    EmbeddingRequest,
    EstimateRequest,
    ImageRequest,
    ModelList,
    MusicRequest,
    Task,
    TaskStatus,
    VideoRequest,
    message_text,
    plan_for,
)
from .results import (
    BudgetStatus,
    ChatResult,
    EmbeddingsResult,
    EstimateResult,
    ModelsResult,
    ModelSummary,
    OutputFile,
    TaskResult,
)
from .tasks import TaskRegistry, TrackedTask

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_A = TypeVar("_A")
_Usage = TypeVar("_Usage", ChatCompletion, EmbeddingList)
DEFAULT_MAX_TOKENS = 1024
MESSAGE_OVERHEAD_TOKENS = 8  # per chat message, on top of its text, in the reservation bound
MediaRequest = ImageRequest | VideoRequest | MusicRequest


def callback_url(public_url: str, reservation_id: str) -> str:
    """Our receiver's URL for one create; the reservation id lets a lost create be recovered."""
    return f"{public_url.rstrip('/')}/webhooks/api-key?r={reservation_id}"


class Cache:
    """Gateway answers that are the same for everyone (models, docs), kept for a while. Concurrent misses
    of one key make one request, not one each."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, object]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, key: str, seconds: float, fetch: Callable[[], Awaitable[_T]]) -> _T:
        async with self._locks.setdefault(key, anyio.Lock()):
            hit = self._entries.get(key)
            if hit is not None and time.monotonic() - hit[0] < seconds:
                return hit[1]  # type: ignore[return-value]
            value = await fetch()
            self._entries[key] = (time.monotonic(), value)
            return value


class InputError(ValueError):
    """A request we can refuse before spending anything; the message says what to change."""


class UnconfirmedError(GatewayError):
    """A paid request whose outcome is unknown (timeout, broken connection, unreadable answer)."""


class LedgerRefusedError(Exception):
    """The ledger could not record a reservation, so the paid call was not sent."""


class BadAnswerError(ValueError):
    """A gateway answer with a number no charge can be (infinite, negative, beyond any wallet)."""


class Service:
    """One principal's view of the gateway: its ledger and tasks, the shared client and caches.

    `hosted`: the principal's own client answers elicitation, so only the operator may raise its budget.
    """

    def __init__(
        self,
        settings: Settings,
        client: GatewayClient,
        ledger: Ledger,
        registry: TaskRegistry,
        *,
        cache: Cache | None = None,
        hosted: bool = False,
    ) -> None:
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.registry = registry
        self._cache = Cache() if cache is None else cache
        self.hosted = hosted
        self._saved: dict[str, list[str]] = {}
        self._saving: dict[str, anyio.Lock] = {}

    # ------------------------------------------------------------ budget and catalogue

    async def budget(self) -> BudgetStatus:
        """Read from the store at every call: an operator's change shows at once, in every process."""
        return BudgetStatus.of(await self.ledger.totals(), await self.ledger.open_reservations())

    async def models(self) -> ModelList:
        return await self._cached("models", self.client.list_models)

    async def list_models(self, modality: str | None = None, query: str | None = None) -> ModelsResult:
        needle = (query or "").lower()
        found = [
            ModelSummary(id=m.id, modality=m.modality, name=m.name, description=m.description, parameters=m.parameters)
            for m in (await self.models()).data
            if (modality is None or m.modality == modality)
            and needle in f"{m.id} {m.name or ''} {m.description or ''}".lower()
        ]
        return ModelsResult(models=found, count=len(found))

    async def document(self, name: str) -> Document:
        return await self._cached(f"doc:{name}", lambda: self.client.get_document(name))

    async def _check_model(self, model: str, modality: str) -> None:
        """Refuse an unknown model or one of another modality before anything is estimated or reserved."""
        catalogue = (await self.models()).data
        info = next((m for m in catalogue if m.id == model), None)
        if info is not None and info.modality == modality:
            return
        choices = ", ".join(m.id for m in catalogue if m.modality == modality) or "none"
        what = f"'{model}' is a {info.modality} model" if info else f"there is no model '{model}'"
        raise InputError(f"Cannot use '{model}' for {modality}: {what}. {modality.capitalize()} models: {choices}.")

    # ------------------------------------------------------------ estimate

    async def estimate(self, model: str, **parameters: object) -> EstimateResult:
        """Price a planned call of `model` (its modality comes from the catalogue)."""
        info = next((m for m in (await self.models()).data if m.id == model), None)
        if info is None:
            raise InputError(f"There is no model '{model}'; list_models shows the models.")
        plan = EstimateRequest.model_validate({"model": model, "modality": info.modality, **parameters})
        estimate = await self.client.estimate(plan)
        budget = await self.budget()
        return EstimateResult(
            model=estimate.model, modality=estimate.modality, credits=estimate.credits,
            fits_budget=estimate.credits <= budget.remaining, breakdown=estimate.breakdown, budget=budget,
        )  # fmt: skip

    # ------------------------------------------------------------ media tasks

    async def generate(self, request: MediaRequest) -> TaskResult:
        modality, create = self._create_for(request)
        await self._check_model(request.model, modality)
        plan = plan_for(request)
        purpose = f"{modality} with {request.model}"

        async def send(reservation: Reservation) -> Task:
            update: dict[str, object] = {"max_credits": reservation.credits}
            if self.settings.public_url:  # the gateway will push the task's end to our receiver
                update["callback_url"] = HttpUrl(callback_url(self.settings.public_url, reservation.id))
            return await create(request.model_copy(update=update))

        async def track(task: Task, reservation: Reservation) -> TrackedTask:
            log.info("created %s task %s (%d credits reserved)", modality, task.task_id, reservation.credits)
            return await self.registry.track(task, modality, reservation)

        tracked = await self._paid(
            plan, purpose, send, track, recover=lambda task_id: Task(task_id=task_id, status="pending")
        )
        return await self.task_result(tracked)

    def _create_for(self, request: MediaRequest) -> tuple[str, Callable[..., Awaitable[Task]]]:
        if isinstance(request, ImageRequest):
            return "image", self.client.generate_image
        if isinstance(request, VideoRequest):
            return "video", self.client.generate_video
        return "music", self.client.generate_music

    async def poll(
        self, task_id: str, wait_seconds: float, on_change: Callable[[Task], Awaitable[None]] | None = None
    ) -> TaskResult:
        async def changed(tracked: TrackedTask) -> None:
            if on_change is not None:
                await on_change(tracked.task)

        wait = min(max(wait_seconds, 0.0), self.settings.max_wait_seconds)
        tracked = await self.registry.wait(task_id, wait, changed)
        warning = None
        if tracked.task.status == TaskStatus.SUCCEEDED and self.settings.output_dir is not None:
            try:
                await self._save(tracked)
            except (GatewayError, OSError) as exc:  # the result links still stand: never hide them
                log.warning("could not save the results of %s: %s", task_id, exc)
                warning = f"Saving to the output directory failed ({exc}); the links above still work."
        return await self.task_result(tracked, warning)

    async def _save(self, tracked: TrackedTask) -> None:
        """Download a finished task's results once, however many polls ask at the same time."""
        lock = self._saving.setdefault(tracked.task_id, anyio.Lock())
        async with lock:
            if tracked.task_id in self._saved:
                return
            assert self.settings.output_dir is not None
            paths = await save_outputs(
                self.client, tracked.task_id, tracked.task.outputs, Path(self.settings.output_dir),
                max_bytes=self.settings.max_download_bytes,
            )  # fmt: skip
            self._saved[tracked.task_id] = [str(p) for p in paths]

    async def task_result(self, tracked: TrackedTask, warning: str | None = None) -> TaskResult:
        task, reservation = tracked.task, tracked.reservation
        saved = self._saved.get(task.task_id, [])
        outputs = [
            OutputFile(url=o.url, mime_type=o.mime_type, path=saved[i] if i < len(saved) else None)
            for i, o in enumerate(o for o in task.outputs if o.url)
        ]
        charged = task.credits.charged if task.credits else None
        if task.status == TaskStatus.SUCCEEDED:
            step = "Done: the outputs are durable links" + (", saved locally too." if saved else ".")
        elif task.status == TaskStatus.FAILED:
            held = f"its {reservation.credits} reserved credits were released" if reservation else "nothing was charged"
            step = f"The task failed and {held}. Adjust the prompt or parameters and try again."
        else:
            step = "Still working: call poll_task with this task_id and wait_seconds (polling is free)."
        if warning:
            step = f"{step} {warning}"
        return TaskResult(
            task_id=task.task_id, status=str(task.status), modality=tracked.modality, model=task.model,
            progress=task.progress, credits_reserved=reservation.credits if reservation else None,
            credits_charged=charged if task.status == TaskStatus.SUCCEEDED else None, outputs=outputs,
            error=task.error.message if task.error else None, next_step=step, budget=await self.budget(),
        )  # fmt: skip

    # ------------------------------------------------------------ chat and embeddings

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self._check_model(request.model, "chat")
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        # No tokenizer makes more tokens than bytes; whole content parts are counted, images and all.
        bound_in = sum(len(json.dumps(m.content).encode()) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
        plan = EstimateRequest(model=request.model, modality="chat", input_tokens=bound_in, output_tokens=max_tokens)

        async def send(reservation: Reservation) -> ChatCompletion:
            update = {"max_tokens": max_tokens, "max_credits": reservation.credits}
            return await self.client.chat_completion(request.model_copy(update=update))

        completion, charged = await self._paid(plan, f"chat with {request.model}", send, self._settle_usage(plan))
        choice = completion.choices[0] if completion.choices else None
        return ChatResult(
            model=completion.model, content=message_text(choice.message.content) if choice else None,
            finish_reason=choice.finish_reason if choice else None, usage=completion.usage,
            credits_charged=charged, budget=await self.budget(),
        )  # fmt: skip

    async def embed(self, request: EmbeddingRequest) -> EmbeddingsResult:
        await self._check_model(request.model, "embedding")
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts or not all(texts):
            raise InputError("input must be a non-empty text or a list of non-empty texts.")
        bound = sum(len(t.encode()) for t in texts)  # no tokenizer gives more tokens than bytes
        plan = EstimateRequest(model=request.model, modality="embedding", input_tokens=bound)

        async def send(reservation: Reservation) -> EmbeddingList:
            return await self.client.create_embeddings(request.model_copy(update={"max_credits": reservation.credits}))

        result, charged = await self._paid(plan, f"embeddings with {request.model}", send, self._settle_usage(plan))
        vectors = [item.embedding for item in sorted(result.data, key=lambda item: item.index)]
        return EmbeddingsResult(
            model=result.model, embeddings=vectors, dimensions=len(vectors[0]) if vectors else 0,
            usage=result.usage, credits_charged=charged, budget=await self.budget(),
        )  # fmt: skip

    def _settle_usage(self, plan: EstimateRequest) -> Callable[[_Usage, Reservation], Awaitable[tuple[_Usage, int]]]:
        """Settle a chat or embeddings reservation at the real charge once the answer is in."""

        async def settle(answer: _Usage, reservation: Reservation) -> tuple[_Usage, int]:
            charged = await self._charge_of(answer, plan, reservation)
            await self.registry.durably(
                f"settle the {plan.modality} call", lambda: self.ledger.settle(reservation, charged)
            )
            return answer, charged

        return settle

    async def _charge_of(
        self, answer: ChatCompletion | EmbeddingList, plan: EstimateRequest, reservation: Reservation
    ) -> int:
        """The real charge: as the gateway states it, else priced from the usage, else the whole reservation."""
        stated = (answer.model_extra or {}).get("credits")
        if isinstance(stated, int | float) and not isinstance(stated, bool):
            if not 0 <= stated <= MAX_CREDITS:  # inf, nan, negative or absurd: not a charge we can count
                raise BadAnswerError(f"the gateway stated a charge of {stated!r} credits")
            return int(-(-stated // 1))
        if answer.usage is None:
            return reservation.credits
        used = plan.model_copy(update={"input_tokens": answer.usage.prompt_tokens,
                                       "output_tokens": answer.usage.completion_tokens})  # fmt: skip
        try:
            return (await self.client.estimate(used)).credits
        except GatewayError:
            return reservation.credits

    # ------------------------------------------------------------ the paid-call flow

    async def _paid(
        self,
        plan: EstimateRequest,
        purpose: str,
        send: Callable[[Reservation], Awaitable[_A]],
        done: Callable[[_A, Reservation], Awaitable[_T]],
        *,
        recover: Callable[[str], _A] | None = None,
    ) -> _T:
        """Estimate, reserve, `send` with max_credits = the reservation, then `done` ties the reservation up.

        Nothing is sent unless the store recorded the reservation. Once `send` has begun, the reservation is
        released only when the gateway's own answer says it did nothing; any other failure (a timeout, an
        unreadable or undecodable answer, a redirect loop, a bad number) keeps it counted, unconfirmed.
        `recover` rebuilds the answer from a task id found in an unreadable one.
        """
        estimate = await self.client.estimate(plan)
        with anyio.CancelScope(shield=True):  # a hold the store made is never lost to a cancelled caller
            try:
                reservation = await self.ledger.reserve(estimate.credits, purpose)  # BudgetExceededError: none
            except LedgerUnavailableError as exc:
                raise LedgerRefusedError(
                    f"The {purpose} was not sent: the budget ledger could not record its reservation ({exc}). "
                    "Nothing was created or charged. Try again later, or ask the operator to check the ledger."
                ) from None
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled while reserving: give it back, send nothing
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.registry.durably(f"release the {purpose}", lambda: self.ledger.release(reservation))
            raise
        with anyio.CancelScope(shield=True):  # a created task id must not be lost to a cancelled call
            try:
                answer = await send(reservation)
            except GatewayError as exc:
                task_id = _task_id_in(exc) if recover is not None else None
                if task_id is None:
                    await self._unsent_or_unknown(exc, reservation, purpose)
                    raise
                log.warning("unreadable answer to the %s, but it names task %s: tracking it", purpose, task_id)
                assert recover is not None
                answer = recover(task_id)
            except Exception as exc:  # after the request left: undecodable body, redirect loop, a bad number
                raise _unconfirmed(purpose, reservation, _describe(exc), None) from exc
            try:
                result = await done(answer, reservation)
            except Exception as exc:
                task_id = getattr(answer, "task_id", None)
                raise _unconfirmed(purpose, reservation, _describe(exc), task_id) from exc
        return result

    async def _unsent_or_unknown(self, exc: GatewayError, reservation: Reservation, purpose: str) -> None:
        """Release the reservation of a request the gateway refused; keep it when the outcome is unknown."""
        if not _may_have_happened(exc):
            await self.registry.durably(f"release the {purpose}", lambda: self.ledger.release(reservation))
            return
        raise _unconfirmed(purpose, reservation, exc.message, None) from exc

    async def _cached(self, key: str, fetch: Callable[[], Awaitable[_T]]) -> _T:
        return await self._cache.get(key, self.settings.docs_cache_seconds, fetch)


def _unconfirmed(purpose: str, reservation: Reservation, why: str, task_id: str | None) -> UnconfirmedError:
    """The error for a paid request that may have reached the gateway: its credits stay counted."""
    task = f" It was answered with task {task_id}: poll_task shows its state." if task_id else ""
    return UnconfirmedError(
        f"The gateway did not confirm the {purpose} ({why}). It may have been created, so its "
        f"{reservation.credits} credits stay reserved until that is known.{task}",
        hint="Check the api-key.org dashboard before trying again; budget_status shows the reservation, and "
        "the operator can close it (apikey-mcp admin close).",
    )


def _describe(exc: Exception) -> str:
    """A short, key-free account of an exception from a gateway answer."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"unreadable answer: {where + ': ' if where else ''}{first['msg']}"
    if isinstance(exc, httpx2.DecodingError):
        return "the answer's body could not be decoded"
    if isinstance(exc, httpx2.TooManyRedirects):
        return "the answer redirected too many times"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _may_have_happened(exc: GatewayError) -> bool:
    """Whether the gateway may have acted on a paid request that failed: after a timeout, a broken
    connection or an unreadable answer, a 5xx that is not the gateway's own refusal (a proxy's 502/504), or
    an answer that is neither success nor refusal (a redirect). A 4xx is the gateway saying it did nothing."""
    if isinstance(exc, GatewayUnreachableError):
        return False
    if isinstance(exc, GatewayProtocolError | GatewayConnectionError):
        return True
    if isinstance(exc, ServerError):
        return exc.status in (502, 504) or exc.code is None
    status = getattr(exc, "status", None)
    return status is not None and not 400 <= status < 500  # a redirect or an unknown status: not a refusal


def _task_id_in(exc: GatewayError) -> str | None:
    """The task id in a 2xx answer we could not otherwise read, so that the task is still tracked."""
    if not isinstance(exc, GatewayProtocolError) or not exc.body:
        return None
    try:
        task_id = json.loads(exc.body).get("task_id")
    except (ValueError, AttributeError):
        return None
    return task_id if isinstance(task_id, str) and task_id else None
