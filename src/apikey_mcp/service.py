"""What the tools do, without MCP: paid calls, polling, the catalogue and the docs.

Every paid call goes estimate -> reserve in the ledger store (or refuse, sending nothing) -> create with
max_credits equal to the reservation -> tie the reservation to the task -> settle or release when it ends.
The protocol after the estimate, and how each failure is sorted, is in paid.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
from pydantic import HttpUrl

from . import logs
from .budget import Ledger, LedgerUnavailableError, Reservation
from .charges import priced_charge
from .config import Settings
from .confirm import AskedPrices, confirm_spend
from .download_guards import DiskQuota, TargetGuard
from .downloads import Downloads
from .errors import AgentError
from .gateway import GatewayClient, GatewayError
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
from .gateway.webhooks import callback_url
from .paid import BadAnswerError, LedgerRefusedError, UnconfirmedError, paid_call
from .plans import chat_plan, embed_plan
from .policy import check_allowed, check_cap
from .results import (
    BudgetStatus,
    BudgetTotals,
    ChatResult,
    EmbeddingsResult,
    EstimateResult,
    ModelsResult,
    ModelSummary,
    OutputFile,
    TaskResult,
)
from .tasks import TaskRegistry, TrackedTask
from .tracked import lost_step

__all__ = ["BadAnswerError", "InputError", "LedgerRefusedError", "Service", "UnconfirmedError"]
log = logging.getLogger(__name__)
_T = TypeVar("_T")
_A = TypeVar("_A")
_Usage = TypeVar("_Usage", ChatCompletion, EmbeddingList)
SAVE_GRACE = 0.25  # seconds a poll may wait past wait_seconds for a finished task's files (small ones make it)
OPEN_SCAN = 1000  # the open reservations budget_status reads and counts: more than any real session holds, bounded
MediaRequest = ImageRequest | VideoRequest | MusicRequest


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


class InputError(AgentError):
    """A request we can refuse before spending anything; the message says what to change."""


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
        self._asked = AskedPrices()  # what the human was asked to approve (--confirm-above), by model
        self._downloads: Downloads | None = None
        if settings.output_dir is not None:
            self._downloads = Downloads(
                client,
                Path(settings.output_dir),
                max_file_bytes=settings.max_download_bytes,
                max_task_bytes=settings.max_task_download_bytes,
                deadline=settings.download_deadline_seconds,
                guard=TargetGuard(settings.base_url, allow_private=settings.allow_private_downloads),
                quota=DiskQuota.of(Path(settings.output_dir), settings.max_output_dir_bytes),
            )
            registry.forgotten.append(self._downloads.forget)

    # ------------------------------------------------------------ budget and catalogue

    async def budget(self) -> BudgetTotals:
        """Read from the store at every call: an operator's change shows at once, in every process."""
        return BudgetTotals.of(await self.ledger.totals())

    async def budget_status(self, limit: int = 5, offset: int = 0) -> BudgetStatus:
        """The totals and one page of the open reservations (counted up to OPEN_SCAN)."""
        totals, held = await self.ledger.totals(), await self.ledger.open_reservations(OPEN_SCAN)
        shown = (await self.ledger.policy()).status(self.ledger.clock())  # policy, period, resets_at
        return BudgetStatus.page(totals, held, limit, offset).model_copy(update=shown)

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
        """Refuse an unknown model or one of another modality before anything is estimated or reserved.

        Only paid calls check their model: with no key, that is said first (not a failure to reach the gateway)."""
        self.client.require_key()
        catalogue = (await self.models()).data
        info = next((m for m in catalogue if m.id == model), None)
        if info is not None and info.modality == modality:  # then the policy's allow-list, before any estimate
            check_allowed(await self.ledger.policy(), self.ledger.principal, model, modality, hosted=self.hosted)
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
            model=estimate.model,
            modality=estimate.modality,
            credits=estimate.credits,
            fits_budget=estimate.credits <= budget.remaining,
            breakdown=estimate.breakdown,
            budget=budget,
        )

    # ------------------------------------------------------------ media tasks

    async def generate(self, request: MediaRequest) -> TaskResult:
        modality, create = self._create_for(request)
        await self._check_model(request.model, modality)
        plan = plan_for(request)
        purpose = f"{modality} with {request.model}"

        async def send(reservation: Reservation) -> Task:
            update: dict[str, object] = {"max_credits": reservation.credits}
            if self.settings.public_url:  # the gateway will push the task's end to our receiver
                secret = self.settings.webhook_secret.get_secret_value() if self.settings.webhook_secret else None
                update["callback_url"] = HttpUrl(callback_url(self.settings.public_url, reservation.id, secret))
            return await create(request.model_copy(update=update))

        async def track(task: Task, reservation: Reservation) -> TrackedTask:
            logs.note(task_id=task.task_id)
            log.info("created %s task %s (%d credits reserved)", modality, task.task_id, reservation.credits)
            return await self.registry.track(task, modality, reservation)

        tracked = await self._paid(
            plan, purpose, send, track, recover=lambda task_id: Task(task_id=task_id, status="pending")
        )
        try:
            return await self.task_result(tracked)
        except LedgerUnavailableError as exc:  # the task exists: its id must reach the agent all the same
            held = tracked.reservation.credits if tracked.reservation else 0
            raise InputError(
                f"Created {modality} task {tracked.task_id} ({held} credits reserved): poll_task it. "
                f"The budget could not be read just now ({exc})."
            ) from None

    def _create_for(self, request: MediaRequest) -> tuple[str, Callable[..., Awaitable[Task]]]:
        if isinstance(request, ImageRequest):
            return "image", self.client.generate_image
        if isinstance(request, VideoRequest):
            return "video", self.client.generate_video
        return "music", self.client.generate_music

    async def poll(
        self, task_id: str, wait_seconds: float, on_change: Callable[[Task], Awaitable[None]] | None = None
    ) -> TaskResult:
        """The task after at most `wait_seconds` (plus SAVE_GRACE to save a finished task's small results): a
        result host, however slow, holds the answer no longer."""

        async def changed(tracked: TrackedTask) -> None:
            if on_change is not None:
                await on_change(tracked.task)

        wait = min(max(wait_seconds, 0.0), self.settings.max_wait_seconds)
        deadline = anyio.current_time() + wait
        tracked = await self.registry.wait(task_id, wait, changed)
        warning = None
        if tracked.task.status == TaskStatus.SUCCEEDED and self._downloads is not None:
            save = self._downloads.start(tracked.task_id, tracked.task.outputs, self.registry.spawn)
            with anyio.move_on_after(max(deadline - anyio.current_time(), SAVE_GRACE)):
                await save.done.wait()
            warning = save.summary()
        return await self.task_result(tracked, warning)

    async def task_result(self, tracked: TrackedTask, warning: str | None = None) -> TaskResult:
        task, reservation = tracked.task, tracked.reservation
        save = self._downloads.get(task.task_id) if self._downloads is not None else None
        saved = save.paths if save is not None else []
        outputs = [
            OutputFile(url=o.url, mime_type=o.mime_type, path=saved[i] if i < len(saved) else None)
            for i, o in enumerate(o for o in task.outputs if o.url)
        ]
        charged = task.credits.charged if task.credits else None
        if task.status == TaskStatus.SUCCEEDED:
            step = _done_step(self.settings.sandbox, any(saved))
        elif task.status == TaskStatus.FAILED:
            held = f"its {reservation.credits} reserved credits were released" if reservation else "nothing was charged"
            step = f"The task failed and {held}. Adjust the prompt or parameters and try again."
        else:
            step = "Still working: call poll_task with this task_id and wait_seconds (polling is free)."
        status = str(task.status)
        if tracked.lost_at is not None and not task.is_terminal:
            status, step = "lost", lost_step(tracked)
        elif tracked.missing_since is not None and not task.is_terminal:
            step = (
                "The gateway does not know this task just now (it answers 404); its hold stays counted. If "
                "that lasts a minute, the task is marked lost for the operator to close."
            )
        if warning:
            step = f"{step} {warning}"
        return TaskResult(
            task_id=task.task_id,
            status=status,
            modality=tracked.modality,
            model=task.model,
            progress=task.progress,
            credits_reserved=reservation.credits if reservation else None,
            credits_charged=charged if task.status == TaskStatus.SUCCEEDED else None,
            outputs=outputs,
            error=task.error.message if task.error else None,
            next_step=step,
            budget=await self.budget(),
        )

    # ------------------------------------------------------------ chat and embeddings

    async def price(self, plan: EstimateRequest) -> tuple[int, int]:
        """What a paid call would cost and what is left, after the policy's checks (for --confirm-above's question)."""
        await self._check_model(plan.model, plan.modality)
        estimate = await self.client.estimate(plan)
        purpose = f"{plan.modality} with {plan.model}"
        check_cap(await self.ledger.policy(), self.ledger.principal, estimate.credits, purpose, hosted=self.hosted)
        return estimate.credits, (await self.ledger.totals()).remaining

    def asking(self, plan: EstimateRequest, credits: int) -> None:
        """The human is asked to approve `credits` for this call: the approval holds for that price only."""
        self._asked.note(plan, credits)

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self._check_model(request.model, "chat")
        plan = chat_plan(request)
        max_tokens = plan.output_tokens

        async def send(reservation: Reservation) -> ChatCompletion:
            update = {"max_tokens": max_tokens, "max_credits": reservation.credits}
            return await self.client.chat_completion(request.model_copy(update=update))

        completion, charged = await self._paid(plan, f"chat with {request.model}", send, self._settle_usage(plan))
        choice = completion.choices[0] if completion.choices else None
        return ChatResult(
            model=completion.model,
            content=message_text(choice.message.content) if choice else None,
            finish_reason=choice.finish_reason if choice else None,
            usage=completion.usage,
            credits_charged=charged,
            budget=await self.budget(),
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingsResult:
        await self._check_model(request.model, "embedding")
        texts = [request.input] if isinstance(request.input, str) else request.input
        if not texts or not all(texts):
            raise InputError("input must be a non-empty text or a list of non-empty texts.")
        plan = embed_plan(request)

        async def send(reservation: Reservation) -> EmbeddingList:
            return await self.client.create_embeddings(request.model_copy(update={"max_credits": reservation.credits}))

        result, charged = await self._paid(plan, f"embeddings with {request.model}", send, self._settle_usage(plan))
        vectors = [item.embedding for item in sorted(result.data, key=lambda item: item.index)]
        return EmbeddingsResult(
            model=result.model,
            embeddings=vectors,
            dimensions=len(vectors[0]) if vectors else 0,
            usage=result.usage,
            credits_charged=charged,
            budget=await self.budget(),
        )

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
        """The real charge: as the gateway states it (even above the hold: the ledger records an overcharge), else
        priced from the usage but never above the hold sent as max_credits, else the whole reservation."""
        stated = (answer.model_extra or {}).get("credits")
        if isinstance(stated, int | float) and not isinstance(stated, bool):
            if not 0 <= stated <= MAX_CREDITS:  # inf, nan, negative or absurd: not a charge we can count
                raise BadAnswerError(f"the gateway stated a charge of {stated!r} credits")
            return int(-(-stated // 1))
        if answer.usage is None:
            return reservation.credits
        used = plan.model_copy(
            update={"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens}
        )
        try:
            return priced_charge((await self.client.estimate(used)).credits, reservation.credits)
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
        """Estimate; the policy's cap and the human's confirmation above --confirm-above (policy.py, confirm.py);
        then the paid-call protocol (paid.py) with the estimate as the reservation."""
        estimate = await self.client.estimate(plan)
        check_cap(await self.ledger.policy(), self.ledger.principal, estimate.credits, purpose, hosted=self.hosted)
        confirm_spend(self.settings.confirm_above, plan, estimate.credits, asked=self._asked.take(plan))
        return await paid_call(
            self.ledger,
            self.registry,
            estimate.credits,
            purpose,
            send,
            done,
            recover=recover,
            model=plan.model,
            modality=str(plan.modality),
        )

    async def _cached(self, key: str, fetch: Callable[[], Awaitable[_T]]) -> _T:
        return await self._cache.get(key, self.settings.docs_cache_seconds, fetch)


def _done_step(sandbox: bool, saved: bool) -> str:
    if saved:
        return "Done: the outputs are links, saved locally too."
    if sandbox:  # the sandbox serves its files from this process: they go when it stops
        return "Done: the outputs are links to the sandbox gateway, served only while this server runs."
    return "Done: the outputs are durable links."
