"""The resolvers that ask the human: before a paid call above `--confirm-above` (confirm.py says why and when),
and for a higher budget (`request_budget_increase`; the policy is in budget_raise.py).

Each paid tool declares one (`Resolve(...)`), which sees the tool's validated arguments: it prices the call as
the tool will (after the policy's allow-list and cap), and asks only when the price is above the setting and
the client can answer. Otherwise it asks nothing, and the tool body decides: under the setting the call goes
on; above it, unasked, the call is refused.
"""

from __future__ import annotations

from mcp.server.mcpserver import Context, Elicit
from pydantic import BaseModel, Field

from .bound_service import current_service
from .confirm import SpendApproval, question
from .gateway.models import ChatMessage, ChatRequest, EmbeddingRequest, EstimateRequest
from .plans import chat_plan, embed_plan


async def _ask(ctx: Context, plan: EstimateRequest) -> Elicit[SpendApproval] | None:
    service = current_service()
    above, capabilities = service.settings.confirm_above, ctx.client_capabilities
    if above is None or capabilities is None or capabilities.elicitation is None:
        return None
    credits, remaining = await service.price(plan)  # a refused model or a call over the cap: refused before asking
    if credits <= above:
        return None
    service.asking(plan, credits)
    return Elicit(question(plan, credits, remaining), SpendApproval)


async def ask_video(
    ctx: Context, model: str, duration: int | None, resolution: str | None, input_mode: str
) -> Elicit[SpendApproval] | None:
    plan = {"model": model, "modality": "video", "duration": duration, "resolution": resolution}
    return await _ask(ctx, EstimateRequest.model_validate({**plan, "input_mode": input_mode}))


async def ask_image(ctx: Context, model: str, n: int, size: str | None) -> Elicit[SpendApproval] | None:
    return await _ask(ctx, EstimateRequest(model=model, modality="image", n=n, size=size))


async def ask_music(ctx: Context, model: str, duration: int | None) -> Elicit[SpendApproval] | None:
    return await _ask(ctx, EstimateRequest(model=model, modality="music", duration=duration))


async def ask_chat(
    ctx: Context,
    model: str,
    prompt: str | None,
    messages: list[ChatMessage] | None,
    system: str | None,
    max_tokens: int | None,
) -> Elicit[SpendApproval] | None:
    if (prompt is None) == (messages is None):
        return None  # the tool body says what is wrong
    conversation = list(messages or [ChatMessage(role="user", content=prompt)])
    if system:
        conversation.insert(0, ChatMessage(role="system", content=system))
    return await _ask(ctx, chat_plan(ChatRequest(model=model, messages=conversation, max_tokens=max_tokens)))


async def ask_embeddings(ctx: Context, model: str, input: list[str]) -> Elicit[SpendApproval] | None:
    return await _ask(ctx, embed_plan(EmbeddingRequest(model=model, input=input)))


class BudgetApproval(BaseModel):
    approve: bool = Field(description="Raise the session budget by the requested credits?")


async def ask_human(credits: int, reason: str, ctx: Context) -> Elicit[BudgetApproval] | None:
    """Ask for a higher budget through elicitation when the client supports it and a human answers it (stdio);
    None tells the tool to explain the other way. Hosted, the principal's own client would answer: never asked."""
    capabilities = ctx.client_capabilities
    if current_service().hosted or capabilities is None or capabilities.elicitation is None:
        return None
    remaining = await current_service().budget()
    return Elicit(
        f"The agent asks to raise this session's API-Key credit budget by {credits} credits "
        f"(now {remaining.remaining} of {remaining.budget} left). Reason: {reason}",
        BudgetApproval,
    )
