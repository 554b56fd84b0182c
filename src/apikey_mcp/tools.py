"""The MCP tools: typed inputs, a structured result beside a short summary, and errors an agent can act on.

Each tool validates, calls the service, and shapes the result; the work itself lives in service.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any

from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, Field

from .answers import agent_errors, shaped, task_links, task_summary
from .asking import ask_chat, ask_embeddings, ask_image, ask_music, ask_video
from .budget import HUMAN
from .config import MAX_WAIT_SECONDS
from .confirm import SpendApproval, answered
from .gateway import NotFoundError
from .gateway.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    ImageRequest,
    InputMode,
    Modality,
    MusicRequest,
    Task,
    TaskStatus,
    VideoRequest,
)
from .logs import tell
from .results import (
    MAX_PAGE,
    BudgetIncreaseResult,
    BudgetStatus,
    ChatResult,
    EmbeddingsResult,
    EstimateResult,
    ModelsResult,
    TaskResult,
    TaskStarted,
    credits_text,
)
from .service import InputError, Service
from .strict import StrictTool


def _model(kind: str, example: str) -> str:
    return f"{kind} model from list_models, e.g. '{example}'."


AnyModel = Annotated[str, Field(description=_model("Any", "seedance-2-fast"))]
ImageModel = Annotated[str, Field(description=_model("Image", "flux-schnell"))]
VideoModel = Annotated[str, Field(description=_model("Video", "seedance-2-fast"))]
MusicModel = Annotated[str, Field(description=_model("Music", "music-1"))]
ChatModel = Annotated[str, Field(description=_model("Chat", "gpt-4o-mini"))]
EmbeddingModel = Annotated[str, Field(description=_model("Embedding", "embed-small"))]
Prompt = Annotated[str, Field(min_length=1, max_length=8000, description="What to generate.")]
NonEmpty = Annotated[str, Field(min_length=1)]
Duration = Annotated[int | None, Field(ge=1, le=600, description="Seconds; omit for the model's default.")]

# Only what differs from the spec's defaults (not read-only, destructive, not idempotent, open world).
_READ = ToolAnnotations(read_only_hint=True)
_SPEND = ToolAnnotations(destructive_hint=False)
_LOCAL = ToolAnnotations(read_only_hint=True, open_world_hint=False)


_current: ContextVar[Service] = ContextVar("apikey_mcp_service")
Confirmed = ElicitationResult[SpendApproval]  # the human's answer above --confirm-above (asking.py, confirm.py)


def current_service() -> Service:
    """The service of the principal whose request is being handled (bound by the server's middleware)."""
    return _current.get()


@contextmanager
def serving(service: Service) -> Iterator[None]:
    token = _current.set(service)
    try:
        yield
    finally:
        _current.reset(token)


async def start(ctx: Context, request: ImageRequest | VideoRequest | MusicRequest, answer: Confirmed) -> CallToolResult:
    """The paid flow for a media task, answered at once with the task id."""
    with agent_errors(), answered(answer):
        result = await current_service().generate(request)
    await tell(ctx, "info", f"created {result.modality} task {result.task_id}")
    return shaped(result.started(), task_summary(result))


class BudgetApproval(BaseModel):
    approve: bool = Field(description="Raise the session budget by the requested credits?")


async def ask_human(credits: int, reason: str, ctx: Context) -> Elicit[BudgetApproval] | None:
    """Ask through elicitation when the client supports it and a human answers it (stdio); None tells the tool
    to explain the other way. Hosted, the principal's own client would answer: it is never asked."""
    capabilities = ctx.client_capabilities
    if current_service().hosted or capabilities is None or capabilities.elicitation is None:
        return None
    remaining = await current_service().budget()
    return Elicit(
        f"The agent asks to raise this session's API-Key credit budget by {credits} credits "
        f"(now {remaining.remaining} of {remaining.budget} left). Reason: {reason}",
        BudgetApproval,
    )


def build_tools() -> list[Tool]:
    """Every tool, strict about its arguments (see strict.py), for `MCPServer(tools=...)`."""
    tools: list[Tool] = []

    def tool(*, title: str, annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], None]:
        def register(fn: Callable[..., Any]) -> None:
            tools.append(StrictTool.of(fn, title=title, annotations=annotations))

        return register

    @tool(title="List models", annotations=_READ)
    async def list_models(
        ctx: Context,
        modality: Annotated[Modality | None, Field(description="Only models of this kind.")] = None,
        query: Annotated[str | None, Field(description="Text in the id, name or description.")] = None,
    ) -> Annotated[CallToolResult, ModelsResult]:
        """The models, each with what it accepts (durations, resolutions, input modes, sizes). Free.
        Next: estimate."""
        with agent_errors():
            result = await current_service().list_models(modality, query)
        names = ", ".join(f"{m.id} ({m.modality})" for m in result.models) or "none match"
        return shaped(result, f"{result.count} model(s): {names}.")

    @tool(title="Estimate credits", annotations=_READ)
    async def estimate(
        ctx: Context,
        model: AnyModel,
        duration: Duration = None,
        resolution: Annotated[str | None, Field(description="Video: e.g. '720p'.")] = None,
        input_mode: Annotated[InputMode | None, Field(description="Video: what it starts from.")] = None,
        n: Annotated[int | None, Field(ge=1, le=8, description="Image: how many.")] = None,
        size: Annotated[str | None, Field(description="Image: e.g. '1024x1024'.")] = None,
        input_tokens: Annotated[int | None, Field(ge=0, description="Chat, embeddings: tokens in.")] = None,
        output_tokens: Annotated[int | None, Field(ge=0, description="Chat: tokens out.")] = None,
    ) -> Annotated[CallToolResult, EstimateResult]:
        """Credits a planned call would cost, and whether it fits the budget left. Free; creates nothing.
        Tell the user, then call the generate tool with the same parameters."""
        with agent_errors():
            result = await current_service().estimate(
                model,
                duration=duration,
                resolution=resolution,
                input_mode=input_mode,
                n=n,
                size=size,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        verdict = "fits" if result.fits_budget else "does NOT fit"
        summary = f"{model}: about {credits_text(result.credits)}, which {verdict} the budget."
        return shaped(result, f"{summary} {result.budget.line()}")

    @tool(title="Generate an image", annotations=_SPEND)
    async def generate_image(
        ctx: Context,
        prompt: Prompt,
        model: ImageModel,
        n: Annotated[int, Field(ge=1, le=8, description="How many images.")] = 1,
        size: Annotated[str | None, Field(description="e.g. '1024x1024'.")] = None,
        image_urls: Annotated[list[str] | None, Field(max_length=8, description="Reference image URLs.")] = None,
        answer: Annotated[Confirmed, Resolve(ask_image)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, TaskStarted]:
        """Start an image task. Costs credits: the estimate is reserved first; if it does not fit,
        nothing is created. Returns a task_id; next: poll_task."""
        with agent_errors():
            request = ImageRequest(model=model, prompt=prompt, n=n, size=size, image_urls=image_urls)
        return await start(ctx, request, answer)

    @tool(title="Generate a video", annotations=_SPEND)
    async def generate_video(
        ctx: Context,
        prompt: Prompt,
        model: VideoModel,
        duration: Duration = None,
        resolution: Annotated[str | None, Field(description="e.g. '720p'.")] = None,
        input_mode: Annotated[InputMode, Field(description="What the video starts from.")] = "text-to-video",
        image_url: Annotated[str | None, Field(description="Start image, for image-to-video.")] = None,
        video_url: Annotated[str | None, Field(description="Source video, for video-to-video.")] = None,
        answer: Annotated[Confirmed, Resolve(ask_video)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, TaskStarted]:
        """Start a text-, image- or video-to-video task. Costs the most: estimate first. The estimate
        is reserved first; if it does not fit, nothing is created. Returns a task_id; next: poll_task."""
        with agent_errors():
            needed = {"image-to-video": ("image_url", image_url), "video-to-video": ("video_url", video_url)}
            if input_mode in needed and not needed[input_mode][1]:
                raise InputError(f"{input_mode} needs {needed[input_mode][0]}: pass the URL of the source.")
            request = VideoRequest(
                model=model,
                prompt=prompt,
                duration=duration,
                resolution=resolution,
                input_mode=input_mode,
                image_url=image_url,
                video_url=video_url,
            )
        return await start(ctx, request, answer)

    @tool(title="Generate music", annotations=_SPEND)
    async def generate_music(
        ctx: Context,
        prompt: Prompt,
        model: MusicModel,
        duration: Duration = None,
        instrumental: Annotated[bool | None, Field(description="True for no vocals.")] = None,
        answer: Annotated[Confirmed, Resolve(ask_music)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, TaskStarted]:
        """Start a music task. Costs credits per second: estimate first. The estimate is reserved
        first; if it does not fit, nothing is created. Returns a task_id; next: poll_task."""
        with agent_errors():
            request = MusicRequest(model=model, prompt=prompt, duration=duration, instrumental=instrumental)
        return await start(ctx, request, answer)

    @tool(title="Poll a task", annotations=_READ)
    async def poll_task(
        ctx: Context,
        task_id: Annotated[str, Field(min_length=1, max_length=200, description="From a generate tool.")],
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_SECONDS, description="At most; returns when it ends.")
        ] = 20,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Wait up to wait_seconds for a media task, with progress. Free. Succeeded: the output links
        (and local paths with --output-dir). Still running: call again."""
        last = -1.0

        async def progress(task: Task) -> None:
            nonlocal last
            if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
                done = 1.0
            elif task.status == TaskStatus.RUNNING:
                done = max(0.1, min(task.progress or 0.1, 0.99))
            else:  # pending, or a status we do not know: not done
                done = 0.05
            last = max(last, round(done * 100, 1))
            await ctx.report_progress(last, 100, f"{task.task_id}: {task.status}")

        with agent_errors():
            try:
                result = await current_service().poll(task_id, wait_seconds, progress)
            except NotFoundError as exc:
                raise InputError(
                    f"No task '{task_id}' here ({exc.code or 'not found'}). Task ids come from generate_image, "
                    "generate_video or generate_music in this session; budget_status lists the running ones."
                ) from None
        return shaped(result, task_summary(result), task_links(result))

    @tool(title="Chat completion", annotations=_SPEND)
    async def chat_completion(
        ctx: Context,
        model: ChatModel,
        prompt: Annotated[str | None, Field(min_length=1, description="One user message; or give messages.")] = None,
        messages: Annotated[
            list[ChatMessage] | None, Field(min_length=1, description="A conversation: {role, content} items.")
        ] = None,
        system: Annotated[str | None, Field(description="System instructions.")] = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=32_000, description="Answer length cap (1024).")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2, description="Randomness, 0 to 2.")] = None,
        answer: Annotated[Confirmed, Resolve(ask_chat)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, ChatResult]:
        """Ask a chat model (prompt or messages). Costs credits per token: a bound from the input and
        max_tokens is reserved, the real usage charged. Returns the answer and its cost."""
        with agent_errors(), answered(answer):
            if (prompt is None) == (messages is None):
                raise InputError("Give either prompt (one message) or messages (a conversation), not both or neither.")
            conversation = list(messages or [ChatMessage(role="user", content=prompt)])
            if system:
                conversation.insert(0, ChatMessage(role="system", content=system))
            request = ChatRequest(model=model, messages=conversation, max_tokens=max_tokens, temperature=temperature)
            result = await current_service().chat(request)
        return shaped(result, f"{result.content}\n\n[{credits_text(result.credits_charged)}. {result.budget.line()}]")

    @tool(title="Create embeddings", annotations=_SPEND)
    async def create_embeddings(
        ctx: Context,
        model: EmbeddingModel,
        input: Annotated[list[NonEmpty], Field(min_length=1, max_length=256, description="Texts to embed.")],
        answer: Annotated[Confirmed, Resolve(ask_embeddings)] = None,  # type: ignore[assignment]
    ) -> Annotated[CallToolResult, EmbeddingsResult]:
        """One vector per text. Costs credits per token: a bound from the texts is reserved, the
        real usage charged."""
        with agent_errors(), answered(answer):
            result = await current_service().embed(EmbeddingRequest(model=model, input=input))
        summary = f"{len(result.embeddings)} embedding(s) of {result.dimensions} dimensions"
        return shaped(result, f"{summary}, {credits_text(result.credits_charged)}. {result.budget.line()}")

    @tool(title="Budget status", annotations=_LOCAL)
    async def budget_status(
        ctx: Context,
        limit: Annotated[int, Field(ge=0, le=MAX_PAGE, description="Open reservations per page.")] = 5,
        offset: Annotated[int, Field(ge=0, description="From next_offset of the previous page.")] = 0,
    ) -> Annotated[CallToolResult, BudgetStatus]:
        """Budget, spent, reserved and remaining credits, and the open reservations (paged). Free."""
        with agent_errors():
            result = await current_service().budget_status(limit, offset)
        return shaped(result, f"{result.line()} {result.open_count} open reservation(s).")

    @tool(
        title="Ask the human for more budget",
        annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False),
    )
    async def request_budget_increase(
        ctx: Context,
        credits: Annotated[int, Field(gt=0, le=1_000_000, description="How many more credits are needed.")],
        reason: Annotated[str, Field(min_length=1, max_length=1000, description="Why, in a sentence for the human.")],
        answer: Annotated[ElicitationResult[BudgetApproval], Resolve(ask_human)],
    ) -> Annotated[CallToolResult, BudgetIncreaseResult]:
        """Ask for a higher budget (you cannot raise it). Free. The human is asked to approve; where they
        cannot be, the result says who can raise it and how."""
        svc = current_service()
        asked = not (isinstance(answer, AcceptedElicitation) and answer.data is None)  # None: no elicitation
        approved = isinstance(answer, AcceptedElicitation) and answer.data is not None and answer.data.approve
        with agent_errors():
            wanted = (await svc.ledger.totals()).budget + credits
            if svc.hosted:  # the client that would answer is the principal's own: only the operator decides
                approved = False
                message = (
                    "Only the operator of this server can raise this budget; neither you nor your client can. "
                    f"Ask them to run: apikey-mcp admin set-budget {svc.ledger.principal} {wanted}."
                )
            elif approved:
                totals = await svc.ledger.set_budget(wanted, HUMAN)
                message = f"The human approved: the budget is now {credits_text(totals.budget)}."
                await tell(ctx, "info", f"budget raised by {credits_text(credits)} with the human's approval")
            elif not asked:
                message = (
                    "This client cannot ask the human directly. Ask them to restart the server with a higher "
                    f"budget: --budget {wanted} or APIKEY_SESSION_BUDGET={wanted}."
                )
            else:
                message = "The human did not approve the increase; keep within the current budget."
            budget = await svc.budget()
        result = BudgetIncreaseResult(
            approved=approved,
            requested=credits,
            granted=credits if approved else 0,
            message=message,
            budget=budget,
        )
        return shaped(result, f"{message} {result.budget.line()}")

    return tools


__all__ = ["MAX_WAIT_SECONDS", "build_tools"]
