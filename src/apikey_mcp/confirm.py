"""Confirmation above a threshold (`--confirm-above`): a paid call estimated above it asks the human first.

The question goes out through MCP elicitation after the policy checks and the estimate, before anything is
reserved: a resolver of each paid tool asks it (asking.py), which the SDK sends mid-call to clients of earlier
protocols and as an `input_required` round to newer ones. The tool body binds the answer (`answered`) and the
service checks it (`confirm_spend`) right before reserving. Only an approval lets the call go on; a decline, a
cancel, or a client that cannot be asked (no elicitation) refuses it, with nothing reserved or created. An
approval never lifts the budget or the operator's policy: the reservation that follows is checked as always.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, Field

from .gateway.models import EstimateRequest
from .policy import PolicyRefusedError

SETTING = "--confirm-above / APIKEY_CONFIRM_ABOVE"
_answer: ContextVar[Any] = ContextVar("apikey_mcp_spend_answer", default=None)


class ConfirmationRefusedError(PolicyRefusedError):
    """A call above --confirm-above that the human did not approve; nothing was reserved or created."""


class SpendApproval(BaseModel):
    approve: bool = Field(description="Spend these credits on this call?")


@contextmanager
def answered(answer: Any) -> Iterator[None]:
    """Bind the human's answer (an ElicitationResult[SpendApproval]) for the paid call that follows."""
    token = _answer.set(answer)
    try:
        yield
    finally:
        _answer.reset(token)


def question(plan: EstimateRequest, credits: int, remaining: int) -> str:
    return f"{describe(plan)} for {credits} credits? {max(remaining - credits, 0)} left"


def describe(plan: EstimateRequest) -> str:
    """The call as a person reads it: `Generate a 6 s 720p video with seedance-2`."""
    if plan.modality == "video":
        what = " ".join(p for p in [f"{plan.duration} s" if plan.duration else "", plan.resolution or ""] if p)
        return f"Generate a {what + ' ' if what else ''}video with {plan.model}"
    if plan.modality == "image":
        n = plan.n or 1
        return f"Generate {n} image{'s' if n > 1 else ''}{f' of {plan.size}' if plan.size else ''} with {plan.model}"
    if plan.modality == "music":
        return f"Generate {f'{plan.duration} s of ' if plan.duration else ''}music with {plan.model}"
    if plan.modality == "chat":
        return f"Ask {plan.model} (up to {plan.output_tokens or 0} tokens of answer)"
    return f"Embed texts with {plan.model}"


class AskedPrices:
    """The price of the last question asked for a model and modality (bounded). The SDK runs a tool's resolver
    again once answered and asks again if the question changed (its text names the price), so the last question
    is the one the human answered; the call's own estimate must not exceed it."""

    LIMIT = 256

    def __init__(self) -> None:
        self._asked: OrderedDict[tuple[str, str], int] = OrderedDict()

    def note(self, plan: EstimateRequest, credits: int) -> None:
        key = (plan.model, str(plan.modality))
        self._asked[key] = credits
        self._asked.move_to_end(key)
        while len(self._asked) > self.LIMIT:
            self._asked.popitem(last=False)

    def take(self, plan: EstimateRequest) -> int | None:
        return self._asked.pop((plan.model, str(plan.modality)), None)


def confirm_spend(above: int | None, plan: EstimateRequest, credits: int, *, asked: int | None = None) -> None:
    """Raise ConfirmationRefusedError for a call estimated above `above` that the human did not approve, or whose
    price rose above the `asked` price the human approved."""
    if above is None or credits <= above:
        return
    answer = _answer.get()
    data = getattr(answer, "data", None)  # AcceptedElicitation: the form; None when not asked or refused
    if data is not None and getattr(data, "approve", False) is True:
        if asked is not None and credits > asked:
            raise ConfirmationRefusedError(
                f"Not confirmed: {describe(plan)} now costs {credits} credits, more than the {asked} the human "
                "approved. Nothing was reserved or created. Call again to be asked at the new price."
            )
        return
    asked = answer is not None and not (getattr(answer, "action", None) == "accept" and data is None)
    why = "the human did not approve it" if asked else "this client cannot ask the human (it has no elicitation)"
    raise ConfirmationRefusedError(
        f"Not confirmed: {describe(plan)} for {credits} credits needs the human's approval, because calls above "
        f"{above} credits are asked first ({SETTING}), and {why}. Nothing was reserved or created. Choose a job "
        f"of at most {above} credits, or ask whoever runs this server to change {SETTING}."
    )
