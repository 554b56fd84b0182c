"""The budget-raise policy: who may raise a session's budget and by how much, and what the agent is told.

Over stdio the human answers an elicitation and an approval raises the budget by what was asked. Hosted, the
client that would answer is the principal's own, so only the operator may raise it (`apikey-mcp admin
set-budget`); a client that cannot be asked is told how the human can restart with more.
"""

from __future__ import annotations

from .budget import HUMAN, Ledger
from .results import BudgetIncreaseResult, BudgetTotals, credits_text


def human_answer(answer: object) -> tuple[bool, bool]:
    """(asked, approved) from an elicitation answer, read by its shape (this layer knows nothing of MCP): an
    acceptance without data means the human was not asked (the client has no elicitation)."""
    accepted = getattr(answer, "action", None) == "accept"
    data = getattr(answer, "data", None)
    return not (accepted and data is None), accepted and data is not None and getattr(data, "approve", False) is True


async def raise_budget(ledger: Ledger, credits: int, answer: object, *, hosted: bool) -> BudgetIncreaseResult:
    """Raise the budget by `credits` if the human approved and may; the result says who can raise it otherwise."""
    asked, approved = human_answer(answer)
    wanted = (await ledger.totals()).budget + credits
    if hosted:  # the client that would answer is the principal's own: only the operator decides
        approved = False
        message = (
            "Only the operator of this server can raise this budget; neither you nor your client can. "
            f"Ask them to run: apikey-mcp admin set-budget {ledger.principal} {wanted}."
        )
    elif approved:
        totals = await ledger.set_budget(wanted, HUMAN)
        message = f"The human approved: the budget is now {credits_text(totals.budget)}."
    elif not asked:
        message = (
            "This client cannot ask the human directly. Ask them to restart the server with a higher "
            f"budget: --budget {wanted} or APIKEY_SESSION_BUDGET={wanted}."
        )
    else:
        message = "The human did not approve the increase; keep within the current budget."
    return BudgetIncreaseResult(
        approved=approved,
        requested=credits,
        granted=credits if approved else 0,
        message=message,
        budget=BudgetTotals.of(await ledger.totals()),
    )
