"""The MCP tools: typed inputs, a structured result beside a short summary, and errors an agent can act on.

Each tool validates, calls the service, and shapes the result; the work itself lives in service.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated

from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from .budget import HUMAN, BudgetExceededError, LedgerUnavailableError
from .config import MAX_WAIT_SECONDS
from .gateway import GatewayError
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
    BudgetIncreaseResult,
    BudgetStatus,
    ChatResult,
    EmbeddingsResult,
    EstimateResult,
    ModelsResult,
    TaskResult,
)
from .service import InputError, LedgerRefusedError, Service

Model = Annotated[str, Field(min_length=1, description="Model id from list_models, e.g. 'seedance-2-fast'.")]
Prompt = Annotated[str, Field(min_length=1, max_length=8000, description="What to generate, in plain words.")]
NonEmpty = Annotated[str, Field(min_length=1)]
Duration = Annotated[int | None, Field(ge=1, le=600, description="Seconds; omit for the model's default.")]

_READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)
_SPEND = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
_LOCAL = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


_current: ContextVar[Service] = ContextVar("apikey_mcp_service")


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


@contextmanager
def agent_errors() -> Iterator[None]:
    """Every anticipated failure becomes a ToolError whose text says what happened and what to do."""
    try:
        yield
    except (BudgetExceededError, InputError, LedgerRefusedError) as exc:
        raise ToolError(str(exc)) from None
    except LedgerUnavailableError as exc:
        raise ToolError(f"The budget ledger cannot be read now ({exc}); try again shortly.") from None
    except GatewayError as exc:
        raise ToolError(f"Gateway error{f' ({exc.code})' if exc.code else ''}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ToolError(f"Invalid input{f' for {where}' if where else ''}: {first['msg']}.") from None


def shaped(result: BaseModel, summary: str, links: list[ResourceLink] | None = None) -> CallToolResult:
    """A structured result with a one-line summary first, the JSON for clients that read only text, and links."""
    data = result.model_dump(mode="json")
    content: list[ContentBlock] = [
        TextContent(type="text", text=summary),
        TextContent(type="text", text=json.dumps(data)),
    ]
    return CallToolResult(content=content + (links or []), structured_content=data)


def task_summary(result: TaskResult) -> str:
    head = f"Task {result.task_id} ({result.modality or 'media'}, {result.model or 'model ?'}): {result.status}"
    if result.status == TaskStatus.SUCCEEDED:
        head += f", charged {result.credits_charged} credits, {len(result.outputs)} output(s)"
    elif result.progress is not None and result.status == TaskStatus.RUNNING:
        head += f" ({result.progress:.0%})"
    return f"{head}. {result.next_step} {result.budget.line()}"


def task_links(result: TaskResult) -> list[ResourceLink]:
    return [
        ResourceLink(type="resource_link", uri=o.url, name=f"{result.task_id}-{i}", mime_type=o.mime_type,
                     description=f"Result {i + 1} of task {result.task_id}" + (f", saved at {o.path}" * bool(o.path)))
        for i, o in enumerate(result.outputs)
    ]  # fmt: skip


async def start(ctx: Context, request: ImageRequest | VideoRequest | MusicRequest) -> CallToolResult:
    """The paid flow for a media task, answered at once with the task id."""
    with agent_errors():
        result = await current_service().generate(request)
    await tell(ctx, "info", f"created {result.modality} task {result.task_id}")
    return shaped(result, task_summary(result))


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


def register_tools(server: MCPServer) -> None:
    @server.tool(title="List models", annotations=_READ)
    async def list_models(
        ctx: Context,
        modality: Annotated[Modality | None, Field(description="Only models of this kind.")] = None,
        query: Annotated[str | None, Field(description="Only models whose id, name or description has it.")] = None,
    ) -> Annotated[CallToolResult, ModelsResult]:
        """List the gateway's models with what each accepts (durations, resolutions, input modes, sizes).
        Free. Use it to pick a model id and valid parameters before estimate or a generate tool."""
        with agent_errors():
            result = await current_service().list_models(modality, query)
        names = ", ".join(f"{m.id} ({m.modality})" for m in result.models) or "none match"
        return shaped(result, f"{result.count} model(s): {names}.")

    @server.tool(title="Estimate credits", annotations=_READ)
    async def estimate(
        ctx: Context,
        model: Model,
        duration: Duration = None,
        resolution: Annotated[str | None, Field(description="Video resolution, e.g. '720p'.")] = None,
        input_mode: Annotated[InputMode | None, Field(description="Video input mode.")] = None,
        n: Annotated[int | None, Field(ge=1, le=8, description="Number of images.")] = None,
        size: Annotated[str | None, Field(description="Image size, e.g. '1024x1024'.")] = None,
        input_tokens: Annotated[int | None, Field(ge=0, description="Chat/embeddings: tokens in.")] = None,
        output_tokens: Annotated[int | None, Field(ge=0, description="Chat: tokens out (max_tokens).")] = None,
    ) -> Annotated[CallToolResult, EstimateResult]:
        """Estimate the credits a planned call would cost, and whether it fits the remaining session budget.
        Free and creates nothing. Call it before generate_image, generate_video or generate_music and tell the
        user the cost; the generate tools refuse anything that does not fit."""
        with agent_errors():
            result = await current_service().estimate(
                model, duration=duration, resolution=resolution, input_mode=input_mode, n=n, size=size,
                input_tokens=input_tokens, output_tokens=output_tokens,
            )  # fmt: skip
        verdict = "fits" if result.fits_budget else "does NOT fit"
        summary = f"{model}: about {result.credits} credits, which {verdict} the budget."
        return shaped(result, f"{summary} {result.budget.line()}")

    @server.tool(title="Generate an image", annotations=_SPEND)
    async def generate_image(
        ctx: Context,
        prompt: Prompt,
        model: Model,
        n: Annotated[int, Field(ge=1, le=8, description="How many images.")] = 1,
        size: Annotated[str | None, Field(description="e.g. '1024x1024'; see list_models.")] = None,
        image_urls: Annotated[list[str] | None, Field(description="Reference image URLs.")] = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Start an image generation task. Costs credits: it is estimated, reserved from the session budget and
        refused (creating nothing) if it does not fit. Returns at once with the task_id; then call poll_task."""
        with agent_errors():
            request = ImageRequest(model=model, prompt=prompt, n=n, size=size, image_urls=image_urls)
        return await start(ctx, request)

    @server.tool(title="Generate a video", annotations=_SPEND)
    async def generate_video(
        ctx: Context,
        prompt: Prompt,
        model: Model,
        duration: Duration = None,
        resolution: Annotated[str | None, Field(description="e.g. '720p'; see list_models.")] = None,
        input_mode: Annotated[InputMode, Field(description="What the video starts from.")] = "text-to-video",
        image_url: Annotated[str | None, Field(description="Start image, for image-to-video.")] = None,
        video_url: Annotated[str | None, Field(description="Source video, for video-to-video.")] = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Start a text-to-video, image-to-video or video-to-video task. Costs credits (videos are the dearest:
        estimate first). Reserved from the session budget and refused, creating nothing, if it does not fit.
        Returns at once with the task_id; then call poll_task until it succeeds."""
        with agent_errors():
            needed = {"image-to-video": ("image_url", image_url), "video-to-video": ("video_url", video_url)}
            if input_mode in needed and not needed[input_mode][1]:
                raise InputError(f"{input_mode} needs {needed[input_mode][0]}: pass the URL of the source.")
            request = VideoRequest(
                model=model, prompt=prompt, duration=duration, resolution=resolution, input_mode=input_mode,
                image_url=image_url, video_url=video_url,
            )  # fmt: skip
        return await start(ctx, request)

    @server.tool(title="Generate music", annotations=_SPEND)
    async def generate_music(
        ctx: Context,
        prompt: Prompt,
        model: Model,
        duration: Duration = None,
        instrumental: Annotated[bool | None, Field(description="No vocals.")] = None,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Start a music generation task. Costs credits (priced per second: estimate first). Reserved from the
        session budget and refused, creating nothing, if it does not fit. Returns the task_id; then poll_task."""
        with agent_errors():
            request = MusicRequest(model=model, prompt=prompt, duration=duration, instrumental=instrumental)
        return await start(ctx, request)

    @server.tool(title="Poll a task", annotations=_READ)
    async def poll_task(
        ctx: Context,
        task_id: Annotated[str, Field(min_length=1, max_length=200, description="From a generate tool.")],
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_SECONDS, description="Wait up to this long for the task to end.")
        ] = 20,
    ) -> Annotated[CallToolResult, TaskResult]:
        """Get an image, video or music task's status; waits up to wait_seconds and returns as soon as it
        succeeds or fails, with progress notifications meanwhile. Free. A finished task returns its output
        URLs (and local paths with --output-dir); if still running, call again."""
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
            result = await current_service().poll(task_id, wait_seconds, progress)
        return shaped(result, task_summary(result), task_links(result))

    @server.tool(title="Chat completion", annotations=_SPEND)
    async def chat_completion(
        ctx: Context,
        model: Model,
        prompt: Annotated[str | None, Field(min_length=1, description="A single user message.")] = None,
        messages: Annotated[
            list[ChatMessage] | None, Field(min_length=1, description="Or a whole conversation (role, content).")
        ] = None,
        system: Annotated[str | None, Field(description="System instructions.")] = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=32_000, description="Cap on the answer's length.")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
    ) -> Annotated[CallToolResult, ChatResult]:
        """Ask one of the gateway's chat models. Costs credits per token: a bound from the prompt and max_tokens is
        reserved first and the real usage is settled after. Give either prompt or messages."""
        with agent_errors():
            if (prompt is None) == (messages is None):
                raise InputError("Give either prompt (one message) or messages (a conversation), not both or neither.")
            conversation = list(messages or [ChatMessage(role="user", content=prompt)])
            if system:
                conversation.insert(0, ChatMessage(role="system", content=system))
            request = ChatRequest(model=model, messages=conversation, max_tokens=max_tokens, temperature=temperature)
            result = await current_service().chat(request)
        return shaped(result, f"{result.content}\n\n[{result.credits_charged} credits. {result.budget.line()}]")

    @server.tool(title="Create embeddings", annotations=_SPEND)
    async def create_embeddings(
        ctx: Context,
        model: Model,
        input: Annotated[list[NonEmpty], Field(min_length=1, max_length=256, description="Texts to embed.")],
    ) -> Annotated[CallToolResult, EmbeddingsResult]:
        """Embed texts as vectors with one of the gateway's embedding models. Costs credits per token, reserved
        first and settled from the real usage."""
        with agent_errors():
            result = await current_service().embed(EmbeddingRequest(model=model, input=input))
        summary = f"{len(result.embeddings)} embedding(s) of {result.dimensions} dimensions"
        return shaped(result, f"{summary}, {result.credits_charged} credits. {result.budget.line()}")

    @server.tool(title="Budget status", annotations=_LOCAL)
    async def budget_status(ctx: Context) -> Annotated[CallToolResult, BudgetStatus]:
        """The session's credit budget: total, spent, reserved for running tasks, and remaining. Free."""
        with agent_errors():
            result = await current_service().budget()
        return shaped(result, result.line())

    @server.tool(
        title="Ask the human for more budget",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                                    open_world_hint=False),
    )  # fmt: skip
    async def request_budget_increase(
        ctx: Context,
        credits: Annotated[int, Field(gt=0, le=1_000_000, description="How many more credits are needed.")],
        reason: Annotated[str, Field(min_length=1, max_length=1000, description="Why, in a sentence for the human.")],
        answer: Annotated[ElicitationResult[BudgetApproval], Resolve(ask_human)],
    ) -> Annotated[CallToolResult, BudgetIncreaseResult]:
        """Ask for a higher budget. The agent cannot raise it itself: over stdio the human is asked to approve
        (when the client supports it); on a hosted server only its operator can raise it, and this says how."""
        svc = current_service()
        asked = not (isinstance(answer, AcceptedElicitation) and answer.data is None)  # None: no elicitation
        approved = isinstance(answer, AcceptedElicitation) and answer.data is not None and answer.data.approve
        with agent_errors():
            wanted = (await svc.ledger.totals()).budget + credits
            if svc.hosted:  # the client that would answer is the principal's own: only the operator decides
                approved = False
                message = (
                    "Only the operator of this server can raise this budget; neither you nor your client can. "
                    f"Ask them to run: apikey-mcp admin set-budget {svc.ledger.principal} {wanted}"
                )
            elif approved:
                totals = await svc.ledger.set_budget(wanted, HUMAN)
                message = f"The human approved: the budget is now {totals.budget} credits."
                await tell(ctx, "info", f"budget raised by {credits} credits with the human's approval")
            elif not asked:
                message = (
                    "This client cannot ask the human directly. Ask them to restart the server with a higher "
                    f"budget: --budget {wanted} or APIKEY_SESSION_BUDGET={wanted}."
                )
            else:
                message = "The human did not approve the increase; keep within the current budget."
            budget = await svc.budget()
        result = BudgetIncreaseResult(
            approved=approved, requested=credits, granted=credits if approved else 0, message=message, budget=budget,
        )  # fmt: skip
        return shaped(result, f"{message} {result.budget.line()}")


__all__ = ["MAX_WAIT_SECONDS", "register_tools"]
