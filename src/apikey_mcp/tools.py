"""The MCP tools: typed inputs, a structured result beside a short summary, and the table that registers them.

Each tool validates, calls the service, and shapes the result; the work itself lives in service.py, and every
failure becomes what the agent reads in one place, the strict wrapper (strict.py). The service of the principal
being served is bound per request (bound_service.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, ElicitationResult, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from .asking import BudgetApproval, ask_chat, ask_embeddings, ask_human, ask_image, ask_music, ask_video
from .bound_service import current_service
from .client_log import tell
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
from .presenting import shaped, task_links, task_summary
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
from .service import InputError
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
Confirmed = ElicitationResult[SpendApproval]  # the human's answer above --confirm-above (asking.py, confirm.py)

# Only what differs from the spec's defaults (not read-only, destructive, not idempotent, open world).
_READ = ToolAnnotations(read_only_hint=True)
_SPEND = ToolAnnotations(destructive_hint=False)
_LOCAL = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_ASK = ToolAnnotations(destructive_hint=False, open_world_hint=False)


async def _start_media(
    ctx: Context, request: ImageRequest | VideoRequest | MusicRequest, answer: Confirmed
) -> CallToolResult:
    """The paid flow for a media task, answered at once with the task id."""
    with answered(answer):
        result = await current_service().generate(request)
    await tell(ctx, "info", f"created {result.modality} task {result.task_id}")
    return shaped(result.started(), task_summary(result))


async def list_models(
    ctx: Context,
    modality: Annotated[Modality | None, Field(description="Only models of this kind.")] = None,
    query: Annotated[str | None, Field(description="Text in the id, name or description.")] = None,
) -> Annotated[CallToolResult, ModelsResult]:
    """The models, each with what it accepts (durations, resolutions, input modes, sizes). Free.
    Next: estimate."""
    result = await current_service().list_models(modality, query)
    names = ", ".join(f"{m.id} ({m.modality})" for m in result.models) or "none match"
    return shaped(result, f"{result.count} model(s): {names}.")


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
    request = ImageRequest(model=model, prompt=prompt, n=n, size=size, image_urls=image_urls)
    return await _start_media(ctx, request, answer)


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
    return await _start_media(ctx, request, answer)


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
    request = MusicRequest(model=model, prompt=prompt, duration=duration, instrumental=instrumental)
    return await _start_media(ctx, request, answer)


async def poll_task(
    ctx: Context,
    task_id: Annotated[str, Field(min_length=1, max_length=200, description="From a generate tool.")],
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, description="At most; returns when it ends.")] = 20,
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

    try:
        result = await current_service().poll(task_id, wait_seconds, progress)
    except NotFoundError as exc:
        raise InputError(
            f"No task '{task_id}' here ({exc.code or 'not found'}). Task ids come from generate_image, "
            "generate_video or generate_music in this session; budget_status lists the running ones."
        ) from None
    return shaped(result, task_summary(result), task_links(result))


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
    with answered(answer):
        if (prompt is None) == (messages is None):
            raise InputError("Give either prompt (one message) or messages (a conversation), not both or neither.")
        conversation = list(messages or [ChatMessage(role="user", content=prompt)])
        if system:
            conversation.insert(0, ChatMessage(role="system", content=system))
        request = ChatRequest(model=model, messages=conversation, max_tokens=max_tokens, temperature=temperature)
        result = await current_service().chat(request)
    return shaped(result, f"{result.content}\n\n[{credits_text(result.credits_charged)}. {result.budget.line()}]")


async def create_embeddings(
    ctx: Context,
    model: EmbeddingModel,
    input: Annotated[list[NonEmpty], Field(min_length=1, max_length=256, description="Texts to embed.")],
    answer: Annotated[Confirmed, Resolve(ask_embeddings)] = None,  # type: ignore[assignment]
) -> Annotated[CallToolResult, EmbeddingsResult]:
    """One vector per text. Costs credits per token: a bound from the texts is reserved, the
    real usage charged."""
    with answered(answer):
        result = await current_service().embed(EmbeddingRequest(model=model, input=input))
    summary = f"{len(result.embeddings)} embedding(s) of {result.dimensions} dimensions"
    return shaped(result, f"{summary}, {credits_text(result.credits_charged)}. {result.budget.line()}")


async def budget_status(
    ctx: Context,
    limit: Annotated[int, Field(ge=0, le=MAX_PAGE, description="Open reservations per page.")] = 5,
    offset: Annotated[int, Field(ge=0, description="From next_offset of the previous page.")] = 0,
) -> Annotated[CallToolResult, BudgetStatus]:
    """Budget, spent, reserved and remaining credits, and the open reservations (paged). Free."""
    result = await current_service().budget_status(limit, offset)
    return shaped(result, f"{result.line()} {result.open_count} open reservation(s).")


async def request_budget_increase(
    ctx: Context,
    credits: Annotated[int, Field(gt=0, le=1_000_000, description="How many more credits are needed.")],
    reason: Annotated[str, Field(min_length=1, max_length=1000, description="Why, in a sentence for the human.")],
    answer: Annotated[ElicitationResult[BudgetApproval], Resolve(ask_human)],
) -> Annotated[CallToolResult, BudgetIncreaseResult]:
    """Ask for a higher budget (you cannot raise it). Free. The human is asked to approve; where they
    cannot be, the result says who can raise it and how."""
    result = await current_service().raise_budget(credits, answer)
    if result.approved:
        await tell(ctx, "info", f"budget raised by {credits_text(credits)} with the human's approval")
    return shaped(result, f"{result.message} {result.budget.line()}")


# The tools in the order they are listed: name, title, what the client may assume (annotations), function.
TOOLS: tuple[tuple[str, str, ToolAnnotations, Callable[..., Any]], ...] = (
    ("list_models", "List models", _READ, list_models),
    ("estimate", "Estimate credits", _READ, estimate),
    ("generate_image", "Generate an image", _SPEND, generate_image),
    ("generate_video", "Generate a video", _SPEND, generate_video),
    ("generate_music", "Generate music", _SPEND, generate_music),
    ("poll_task", "Poll a task", _READ, poll_task),
    ("chat_completion", "Chat completion", _SPEND, chat_completion),
    ("create_embeddings", "Create embeddings", _SPEND, create_embeddings),
    ("budget_status", "Budget status", _LOCAL, budget_status),
    ("request_budget_increase", "Ask the human for more budget", _ASK, request_budget_increase),
)


def build_tools() -> list[Tool]:
    """Every tool, strict about its arguments (see strict.py), for `MCPServer(tools=...)`."""
    return [StrictTool.of(fn, name=name, title=title, annotations=notes) for name, title, notes, fn in TOOLS]


__all__ = ["MAX_WAIT_SECONDS", "TOOLS", "build_tools"]
