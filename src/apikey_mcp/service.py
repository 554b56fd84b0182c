"""What the tools do, without MCP: paid calls, polling, the catalogue and the docs, and asking for more budget.

Every paid call goes estimate -> reserve in the ledger store (or refuse, sending nothing) -> create with
max_credits equal to the reservation -> tie the reservation to the task -> settle or release when it ends.
The protocol after the estimate, and how each failure is sorted, is in paid.py.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
from pydantic import HttpUrl

from . import logs
from .budget import Ledger, LedgerUnavailableError, Reservation
from .budget_raise import raise_budget
from .charges import settled_charge
from .config import Settings
from .confirm import AskedPrices, confirm_spend
from .download_guards import DiskQuota, TargetGuard
from .downloads import Downloads
from .errors import AgentError, LedgerError
from .gateway import GatewayClient
from .gateway.models import (
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
from .paid import paid_call
from .plans import chat_plan, embed_plan
from .policy import check_allowed, check_cap
from .results import (
    BudgetIncreaseResult,
    BudgetStatus,
    BudgetTotals,
    ChatResult,
    EmbeddingsResult,
    EstimateResult,
    ModelsResult,
    ModelSummary,
    TaskResult,
)
from .shared_cache import Cache
from .task_report import task_report
from .tasks import TaskRegistry, TrackedTask

__all__ = ["InputError", "Service", "TotalsUnreadError"]
log = logging.getLogger(__name__)
_T = TypeVar("_T")
_A = TypeVar("_A")
_Usage = TypeVar("_Usage", ChatCompletion, EmbeddingList)
SAVE_GRACE = 0.25  # seconds a poll may wait past wait_seconds for a finished task's files (small ones make it)
OPEN_SCAN = 1000  # the open reservations budget_status reads and counts: more than any real session holds, bounded
MediaRequest = ImageRequest | VideoRequest | MusicRequest


class InputError(AgentError):
    """A request we can refuse before spending anything; the message says what to change."""


class TotalsUnreadError(LedgerError):
    """A task was created, but the budget could not be read to answer with it: the message names the task."""


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

    async def raise_budget(self, credits: int, answer: object) -> BudgetIncreaseResult:
        """The agent asks for `credits` more; `answer` is the human's elicitation answer (budget_raise.py)."""
        return await raise_budget(self.ledger, credits, answer, hosted=self.hosted)

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
            raise TotalsUnreadError(
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
        save = self._downloads.get(tracked.task_id) if self._downloads is not None else None
        saved = save.paths if save is not None else []
        return task_report(tracked, saved, sandbox=self.settings.sandbox, budget=await self.budget(), warning=warning)

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
            charged = await settled_charge(self.client, answer, plan, reservation.credits)
            await self.registry.durably(
                f"settle the {plan.modality} call", lambda: self.ledger.settle(reservation, charged)
            )
            return answer, charged

        return settle

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
