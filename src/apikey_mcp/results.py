"""What the tools return: pydantic models, so every tool publishes an output schema and structured content.

They are published in every session's tool list, so they stay small: few descriptions (the tool's says
what it returns), and fields that may be None are left out of the result instead (`dump`). A paid result
carries the budget's totals only; the open reservations are paged in `budget_status`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema

from .budget import Reservation, Totals
from .gateway.models import ModelParameters, Usage

COST_META = "org.api-key/cost"  # the `_meta` key of a paid result: what the call cost and the budget after it
MAX_PAGE = 100
APP_SCHEMA_VERSION = 1  # of the structured content the MCP Apps read (TaskStarted, TaskResult, BudgetStatus)
_ACCEPTS = {"type": "object", "description": "What it accepts: durations, resolutions, input_modes, sizes, limits."}


def credits_text(n: int) -> str:
    """`1 credit`, `40 credits`: an amount as the agent and the operator read it."""
    return f"{n} credit" if n == 1 else f"{n} credits"


def dump(result: BaseModel) -> dict[str, Any]:
    """A result as the agent gets it: JSON, without the fields that have no value."""
    return result.model_dump(mode="json", exclude_none=True)


class BudgetTotals(BaseModel):
    budget: int
    spent: int
    reserved: int
    remaining: int

    @classmethod
    def of(cls, totals: Totals) -> BudgetTotals:
        return cls(budget=totals.budget, spent=totals.spent, reserved=totals.reserved, remaining=totals.remaining)

    def line(self) -> str:
        left = f"{self.remaining} of {credits_text(self.budget)} left"
        return f"Budget: {left} ({self.spent} spent, {self.reserved} reserved)."


class OpenReservation(BaseModel):
    credits: int
    purpose: str
    task_id: str | None = None


class BudgetStatus(BudgetTotals):
    schema_version: int = APP_SCHEMA_VERSION
    open_reservations: list[OpenReservation]  # one page, oldest first
    open_count: int = Field(description="All open reservations.")
    next_offset: int | None = None  # absent on the last page
    policy: dict[str, Any] | None = None  # the operator's: max_per_call, allow (empty: all), alert_at
    period: str | None = None  # none, day, week or month (UTC): when the budget renews
    resets_at: str | None = None  # ISO 8601 UTC; absent when the period is none

    @classmethod
    def page(cls, totals: Totals, open: list[Reservation], limit: int = 5, offset: int = 0) -> BudgetStatus:
        """The totals and one page of the open reservations, oldest first (`open` is bounded by the caller)."""
        ordered = sorted(open, key=lambda r: r.created_at)
        chosen = ordered[offset : offset + max(0, min(limit, MAX_PAGE))]
        following = offset + len(chosen)
        return cls(
            **BudgetTotals.of(totals).model_dump(),
            open_reservations=[
                OpenReservation(credits=r.credits, purpose=r.purpose, task_id=r.task_id) for r in chosen
            ],
            open_count=len(ordered),
            next_offset=following if following < len(ordered) and chosen else None,
        )


class ModelSummary(BaseModel):
    id: str
    modality: str
    name: str | None = None
    description: str | None = None
    parameters: Annotated[ModelParameters, WithJsonSchema(_ACCEPTS)]


class ModelsResult(BaseModel):
    models: list[ModelSummary]
    count: int


class EstimateResult(BaseModel):
    model: str
    modality: str
    credits: int
    fits_budget: bool
    breakdown: dict[str, Any] | None = None
    budget: BudgetTotals


class OutputFile(BaseModel):
    url: str
    mime_type: str | None = None
    path: str | None = None  # with --output-dir


class _Paid(BaseModel):
    """A result whose cost the client also finds in `_meta` (see COST_META)."""

    def cost(self) -> dict[str, Any]:
        spent = {
            k: v for k, v in self.model_dump(include={"credits_reserved", "credits_charged"}).items() if v is not None
        }
        return {**spent, "budget": self.budget.model_dump()}  # type: ignore[attr-defined]


class TaskStarted(_Paid):
    schema_version: int = APP_SCHEMA_VERSION
    task_id: str
    status: str
    credits_reserved: int | None = None
    next_step: str
    budget: BudgetTotals


class TaskResult(TaskStarted):
    status: str = Field(
        description="pending, running, succeeded or failed; lost when the gateway no longer knows the task."
    )
    modality: str | None = None
    model: str | None = None
    progress: float | None = Field(default=None, description="0 to 1.")
    credits_charged: int | None = None
    outputs: list[OutputFile] = Field(default_factory=list)
    error: str | None = None

    def started(self) -> TaskStarted:
        """What a generate tool answers; a task that ended at once sends the agent to poll_task for the rest."""
        started = TaskStarted.model_validate(self.model_dump(include=set(TaskStarted.model_fields)))
        if self.status in ("succeeded", "failed"):
            started.next_step = f"It has {self.status} already: poll_task returns its outputs or error."
        return started


class ChatResult(_Paid):
    model: str
    content: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    credits_charged: int
    budget: BudgetTotals


class EmbeddingsResult(_Paid):
    model: str
    embeddings: list[list[float]]
    dimensions: int
    usage: Usage | None = None
    credits_charged: int
    budget: BudgetTotals


class BudgetIncreaseResult(BaseModel):
    approved: bool
    requested: int
    granted: int = 0
    message: str
    budget: BudgetTotals
