"""Confirmation above a threshold (`--confirm-above`): a paid call estimated above it asks the human first.

The question goes out through MCP elicitation after the estimate and the policy checks, before anything is
reserved. Only an approval lets the call go on; a decline, a cancel, or a client that cannot ask (no
elicitation, no back channel) refuses it, with nothing reserved or created. An approval never lifts the
budget or the operator's policy: the reservation that follows is checked as always. The server binds how to
ask for each request (`asking`); the service knows nothing of MCP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from mcp.server.elicitation import AcceptedElicitation, elicit_with_validation
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field

from .budget import Totals
from .gateway.models import EstimateRequest
from .policy import PolicyRefusedError

Asker = Callable[[str], Awaitable[bool | None]]  # True: approved; False: declined or cancelled; None: cannot ask
_asker: ContextVar[Asker | None] = ContextVar("apikey_mcp_asker", default=None)
SETTING = "--confirm-above / APIKEY_CONFIRM_ABOVE"


class ConfirmationRefusedError(PolicyRefusedError):
    """A call above --confirm-above that the human did not approve; nothing was reserved or created."""


class SpendApproval(BaseModel):
    approve: bool = Field(description="Spend these credits on this call?")


@contextmanager
def asking(ask: Asker | None) -> Iterator[None]:
    token = _asker.set(ask)
    try:
        yield
    finally:
        _asker.reset(token)


def elicitor(session: Any, related_request_id: Any) -> Asker:
    """Ask the client of `session` (in the request `related_request_id`) with a form of one yes/no field."""

    async def ask(message: str) -> bool | None:
        capabilities = session.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            return None
        try:
            answer = await elicit_with_validation(session, message, SpendApproval, related_request_id)
        except MCPError:  # no back channel (a stateless request), or the client failed to answer
            return None
        except ValueError:  # accepted with no or a malformed answer: not an approval
            return False
        return isinstance(answer, AcceptedElicitation) and answer.data.approve

    return ask


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


async def confirm_spend(above: int | None, plan: EstimateRequest, credits: int, totals: Totals) -> None:
    """Ask before a call estimated above `above`; raise ConfirmationRefusedError unless the human approves."""
    if above is None or credits <= above:
        return
    ask = _asker.get()
    left = max(totals.remaining - credits, 0)
    answer = await ask(f"{describe(plan)} for {credits} credits? {left} left") if ask is not None else None
    if answer:
        return
    why = (
        "the human did not approve it"
        if answer is False
        else "this client cannot ask the human (it has no elicitation)"
    )
    raise ConfirmationRefusedError(
        f"Not confirmed: {describe(plan)} for {credits} credits needs the human's approval, because calls above "
        f"{above} credits are asked first ({SETTING}), and {why}. Nothing was reserved or created. Choose a job "
        f"of at most {above} credits, or ask whoever runs this server to change {SETTING}."
    )
