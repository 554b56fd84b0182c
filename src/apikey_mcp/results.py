"""What the tools return: pydantic models, so every tool publishes an output schema and structured content."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .budget import Reservation, Totals
from .gateway.models import ModelParameters, Usage


class OpenReservation(BaseModel):
    credits: int
    purpose: str
    task_id: str | None = None


class BudgetStatus(BaseModel):
    """The session budget. `spent + reserved <= budget` always; `remaining` is what new calls may use."""

    budget: int
    spent: int
    reserved: int
    remaining: int
    open_reservations: list[OpenReservation] = Field(default_factory=list)

    @classmethod
    def of(cls, totals: Totals, open: list[Reservation]) -> BudgetStatus:
        return cls(
            budget=totals.budget,
            spent=totals.spent,
            reserved=totals.reserved,
            remaining=totals.remaining,
            open_reservations=[OpenReservation(credits=r.credits, purpose=r.purpose, task_id=r.task_id)
                               for r in open],
        )  # fmt: skip

    def line(self) -> str:
        return f"Budget: {self.remaining} of {self.budget} credits left ({self.spent} spent, {self.reserved} reserved)."


class ModelSummary(BaseModel):
    id: str
    modality: str
    name: str | None = None
    description: str | None = None
    parameters: ModelParameters


class ModelsResult(BaseModel):
    models: list[ModelSummary]
    count: int


class EstimateResult(BaseModel):
    model: str
    modality: str
    credits: int = Field(description="Estimated credits for the planned call.")
    fits_budget: bool = Field(description="Whether the estimate fits what is left of the session budget now.")
    breakdown: dict[str, Any] | None = None
    budget: BudgetStatus


class OutputFile(BaseModel):
    url: str = Field(description="Durable result link.")
    mime_type: str | None = None
    path: str | None = Field(default=None, description="Local copy, when the server runs with --output-dir.")


class TaskResult(BaseModel):
    task_id: str
    status: str = Field(description="pending, running, succeeded or failed (or a newer status, kept as given).")
    modality: str | None = None
    model: str | None = None
    progress: float | None = Field(default=None, description="0..1 when the gateway reports it.")
    credits_reserved: int | None = Field(default=None, description="Reserved for this task when it was created.")
    credits_charged: int | None = Field(default=None, description="The real charge, once the task has succeeded.")
    outputs: list[OutputFile] = Field(default_factory=list)
    error: str | None = None
    next_step: str
    budget: BudgetStatus


class ChatResult(BaseModel):
    model: str
    content: str | None
    finish_reason: str | None = None
    usage: Usage | None = None
    credits_charged: int
    budget: BudgetStatus


class EmbeddingsResult(BaseModel):
    model: str
    embeddings: list[list[float]]
    dimensions: int
    usage: Usage | None = None
    credits_charged: int
    budget: BudgetStatus


class BudgetIncreaseResult(BaseModel):
    approved: bool
    requested: int
    granted: int = 0
    message: str
    budget: BudgetStatus
