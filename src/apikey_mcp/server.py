"""Builds the MCP server: wires settings, the gateway client, the ledger and the task registry into tools,
resources and prompts. It holds no logic of its own."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cache
from typing import Annotated, Any

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.request_state import RequestStateSecurity
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    Completion,
    CompletionArgument,
    PromptReference,
    ResourceTemplateReference,
)
from pydantic import Field, SecretStr

from . import __version__, logs, metrics
from .accounts import LOCAL, Accounts
from .bound_service import current_service, serving
from .budget import LedgerStore, LedgerUnavailableError
from .config import Settings
from .gateway import GatewayClient
from .gateway.models import DOCUMENT_PATHS
from .mcp_apps import build_apps
from .own_keys import KeyRefusedError, TooManyKeysError
from .previews import register_previews
from .resource_errors import resource_errors
from .results import MAX_PAGE
from .stores.memory import MemoryLedgerStore
from .strict import sorting_outcome
from .tools import build_tools

log = logging.getLogger(__name__)
MEDIA_KINDS = ("image", "video", "music")
OWN_KEY_HEADER = "x-apikey-gateway-key"  # a client's own gateway key, when the operator allows it

INSTRUCTIONS = """\
Tools for the API-Key gateway: chat, embeddings, image, video and music models paid from one credit wallet.
This session has a credit budget you cannot exceed or raise yourself (budget_status shows it).
For media: list_models -> estimate (free) -> tell the user the cost -> generate_image / generate_video /
generate_music (returns a task_id at once) -> poll_task until it succeeds. Polling is free.
If a call is refused as over budget, pick a cheaper job or use request_budget_increase to ask the human.
"""

_DOC_MIME = {
    "llms.txt": "text/plain",
    "auth.md": "text/markdown",
    "openapi.json": "application/json",
    "index.md": "text/markdown",
    "api-catalog": "application/linkset+json",
}


def build_server(
    settings: Settings,
    *,
    store: LedgerStore | None = None,
    accounts: Accounts | None = None,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
    subscriptions: SubscriptionBus | None = None,
    poll_sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    poll_clock: Callable[[], float] = time.monotonic,
    gateway_sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    clock: Callable[[], float] = time.time,
    closed: anyio.Event | None = None,
    request_state_security: RequestStateSecurity | None = None,
    principal: str = LOCAL,
) -> MCPServer:
    """The MCP server for these settings.

    Over stdio each session opens its own accounts (one `principal`) on `store` (the CLI passes the local
    ledger file; a memory store of its own by default; `poll_sleep` and `poll_clock` own the watchers' time,
    `clock` the budget periods', `gateway_sleep` the gateway client's waits between retries).
    Hosted, the app passes the `accounts` it shares across sessions and transports. `closed` is set once a
    stdio session's accounts have shut down (every unfinished task id logged).
    """

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Accounts]:
        if accounts is not None:
            yield accounts
            return
        if settings.api_key is None:
            log.warning("no API key: set APIKEY_API_KEY (or use --sandbox); paid tools will say so")
        try:
            async with GatewayClient(
                settings.base_url,
                settings.api_key,
                auth_scheme=settings.auth_scheme,
                other_secrets=settings.secrets(),
                sleep=gateway_sleep,
            ) as client:
                opening = Accounts(
                    settings,
                    client,
                    store or MemoryLedgerStore(),
                    poll_sleep=poll_sleep,
                    poll_clock=poll_clock,
                    local=principal,
                    clock=clock,
                )
                async with opening.running() as opened:
                    yield opened
        finally:
            if closed is not None:
                closed.set()

    tools = build_tools()
    server = MCPServer(
        "apikey-mcp",
        title="API-Key gateway",
        description="Chat, embeddings, image, video and music models under one enforced credit budget.",
        instructions=INSTRUCTIONS,
        website_url="https://api-key.org",
        version=__version__,
        lifespan=lifespan,
        log_level=settings.log_level,
        middleware=[_bind_service],
        auth=auth,
        token_verifier=token_verifier,
        subscriptions=subscriptions,
        tools=tools,
        extensions=[build_apps(settings, tools)],  # the media and budget apps, bound to the tools above
        request_state_security=request_state_security,  # replicas share one key: any of them unseals an answer
    )
    _register_resources(server)
    register_previews(server)
    _register_prompts(server)
    return server


async def _bind_service(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Bind the requesting principal's service for the tools, resources and completions that follow.

    The principal is the token's client id on an authenticated transport, else `local` (stdio).
    """
    token = get_access_token()
    accounts: Accounts = ctx.lifespan_context
    principal = token.client_id if token is not None else accounts.local
    headers = getattr(ctx.request, "headers", None) or {}
    own_key = headers.get(OWN_KEY_HEADER) if accounts.settings.allow_byok else None
    try:
        service = await accounts.service(principal, SecretStr(own_key) if own_key else None)
    except (TooManyKeysError, KeyRefusedError) as exc:
        raise MCPError(code=INVALID_REQUEST, message=str(exc)) from None
    except LedgerUnavailableError as exc:
        raise MCPError(code=INTERNAL_ERROR, message=f"The budget ledger is unavailable ({exc}); try again.") from None
    if ctx.method != "tools/call":
        with serving(service), logs.bound(principal=principal):
            return await call_next(ctx)
    name = str((ctx.params or {}).get("name", ""))
    tool = name if name in _tool_names() else "other"  # bounded labels: a client may send any name
    with serving(service), logs.bound(principal=principal, tool=name[:100]), sorting_outcome() as failure:
        try:
            result = await call_next(ctx)
        except BaseException:
            metrics.tool_call(tool, "error")
            raise
    failed = result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False)
    metrics.tool_call(tool, (failure[-1] if failure else "refused_input") if failed else "ok")
    return result


@cache
def _tool_names() -> frozenset[str]:
    return frozenset(tool.name for tool in build_tools())


def _register_resources(server: MCPServer) -> None:
    for name, path in DOCUMENT_PATHS.items():
        _register_document(server, name, path)

    @server.resource("apikey://models", name="models", title="Model catalogue", mime_type="application/json")
    @resource_errors("read the model catalogue")
    async def models() -> str:
        """Every model the gateway offers, with the parameters each accepts."""
        return (await current_service().models()).model_dump_json(exclude_none=True)

    @server.resource("apikey://budget", name="budget", title="Session budget", mime_type="application/json")
    @resource_errors("read the budget")
    async def budget() -> str:
        """The session's budget, spent, reserved and remaining credits, and the first open reservations."""
        return (await current_service().budget_status(MAX_PAGE)).model_dump_json(exclude_none=True)

    @server.resource("apikey://tasks/{task_id}", name="task", title="Task status", mime_type="application/json")
    @resource_errors("read task '{task_id}'", missing="No task '{task_id}' for this key.")
    async def task(task_id: str) -> str:
        """A task's latest known state (fetched from the gateway when it has not ended yet)."""
        return (await current_service().poll(task_id, 0)).model_dump_json()

    @server.completion()  # type: ignore[untyped-decorator, no-untyped-call]  # the SDK's decorator is untyped
    async def complete(
        ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, context: object
    ) -> Completion | None:
        if isinstance(ref, PromptReference) and ref.name == "generate_media" and argument.name == "kind":
            return Completion(values=[k for k in MEDIA_KINDS if k.startswith(argument.value)])
        if isinstance(ref, ResourceTemplateReference) and ref.uri == "apikey://tasks/{task_id}":
            ids = [i for i in reversed(current_service().registry.ids()) if i.startswith(argument.value)]
            return Completion(values=ids[:100], total=len(ids), has_more=len(ids) > 100)
        return None


def _register_document(server: MCPServer, name: str, path: str) -> None:
    @server.resource(
        f"apikey://docs/{name}",
        name=f"docs-{name}",
        title=f"Gateway {path}",
        mime_type=_DOC_MIME[name],
        description=f"The gateway's {path}, fetched from the configured gateway and cached.",
    )
    @resource_errors(f"fetch {path} from the gateway")
    async def document() -> str:
        return (await current_service().document(name)).text


def _register_prompts(server: MCPServer) -> None:
    @server.prompt(title="Generate media within budget")
    def generate_media(
        kind: Annotated[str, Field(description="image, video or music")] = "video",
        brief: Annotated[str, Field(description="What to make; asked for if empty")] = "",
    ) -> str:
        """Walk through estimate -> confirm -> generate -> poll for an image, video or music brief."""
        if kind not in MEDIA_KINDS:
            raise MCPError(code=INVALID_PARAMS, message=f"kind must be image, video or music (got {kind[:40]!r}).")
        return (
            f"I want a {kind}. Brief: {brief or '(ask me for one)'}\n\n"
            "Do it this way:\n"
            f"1. Call budget_status, then list_models with modality='{kind}' and pick a fitting model and parameters.\n"
            "2. Call estimate with them. Tell me the credits and what will be left, and wait for my OK. If it does\n"
            "   not fit, propose a cheaper option (shorter, lower resolution, a faster model) or ask with\n"
            "   request_budget_increase.\n"
            f"3. After my OK, call generate_{kind} with the same parameters. It returns a task_id at once.\n"
            "4. Call poll_task with that task_id and wait_seconds=30 until the status is succeeded or failed.\n"
            "5. Give me the result links (and local paths if any) and the credits charged."
        )

    @server.prompt(title="Plan work within the budget")
    def plan_within_budget(goal: Annotated[str, Field(description="What the work should achieve")]) -> str:
        """Plan a multi-step job so its total estimated cost fits the remaining session budget."""
        return (
            f"Goal: {goal}\n\nCall budget_status and list_models. Draft a plan of gateway calls, call estimate for "
            "each paid step, and show me a table of steps, models and credits with the total against what is "
            "left. Do not start any paid call until I approve the plan."
        )


__all__ = ["build_server"]
