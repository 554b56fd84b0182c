"""Builds the MCP server: wires settings, the gateway client, the ledger and the task registry into tools,
resources and prompts. It holds no logic of its own."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import Completion, ResourceTemplateReference

from . import __version__
from .budget import Ledger
from .config import Settings
from .gateway import GatewayClient, GatewayError, NotFoundError
from .gateway.models import DOCUMENT_PATHS
from .logs import configure
from .service import Service
from .tasks import TaskRegistry
from .tools import register_tools

log = logging.getLogger(__name__)

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


def build_server(settings: Settings, *, ledger: Ledger | None = None) -> MCPServer:
    """The MCP server for these settings. Pass a ledger to share one budget across sessions (or in tests)."""

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Service]:
        key = settings.api_key
        client = GatewayClient(settings.base_url, key, auth_scheme=settings.auth_scheme)
        session_ledger = ledger if ledger is not None else Ledger(settings.session_budget)
        registry = TaskRegistry(
            client, session_ledger, poll_interval=settings.poll_interval, max_poll_interval=settings.max_poll_interval
        )
        if key is None:
            log.warning("no API key: set APIKEY_API_KEY (or use --sandbox); paid tools will say so")
        async with client, registry.running():
            yield Service(settings, client, session_ledger, registry)

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
    )
    register_tools(server)
    _register_resources(server)
    _register_prompts(server)
    return server


_current: ContextVar[Service] = ContextVar("apikey_mcp_service")


async def _bind_service(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Make the session's service reachable from handlers the SDK gives no Context (static resources,
    completions)."""
    token = _current.set(ctx.lifespan_context)
    try:
        return await call_next(ctx)
    finally:
        _current.reset(token)


def _service() -> Service:
    """The service of the session whose request is being handled."""
    return _current.get()


def _register_resources(server: MCPServer) -> None:
    for name, path in DOCUMENT_PATHS.items():
        _register_document(server, name, path)

    @server.resource("apikey://models", name="models", title="Model catalogue", mime_type="application/json")
    async def models() -> str:
        """Every model the gateway offers, with the parameters each accepts."""
        try:
            return (await _service().models()).model_dump_json(exclude_none=True)
        except GatewayError as exc:
            raise ResourceError(f"Cannot read the model catalogue: {exc}") from None

    @server.resource("apikey://budget", name="budget", title="Session budget", mime_type="application/json")
    async def budget() -> str:
        """The session's budget, spent, reserved and remaining credits."""
        return _service().budget().model_dump_json()

    @server.resource("apikey://tasks/{task_id}", name="task", title="Task status", mime_type="application/json")
    async def task(task_id: str) -> str:
        """A task's latest known state (fetched from the gateway when it has not ended yet)."""
        svc = _service()
        try:
            return (await svc.poll(task_id, 0)).model_dump_json()
        except NotFoundError:
            raise ResourceNotFoundError(f"No task '{task_id}' for this key.") from None
        except GatewayError as exc:
            raise ResourceError(f"Cannot read task '{task_id}': {exc}") from None

    @server.completion()
    async def complete(ref, argument, context) -> Completion | None:
        if isinstance(ref, ResourceTemplateReference) and ref.uri == "apikey://tasks/{task_id}":
            ids = [i for i in reversed(_service().registry.ids()) if i.startswith(argument.value)]
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
    async def document() -> str:
        try:
            return (await _service().document(name)).text
        except GatewayError as exc:
            raise ResourceError(f"Cannot fetch {path} from the gateway: {exc}") from None


def _register_prompts(server: MCPServer) -> None:
    @server.prompt(title="Generate media within budget")
    def generate_media(kind: str = "video", brief: str = "") -> str:
        """Walk through estimate -> confirm -> generate -> poll for an image, video or music brief."""
        return (
            f"I want a {kind}. Brief: {brief or '(ask me for one)'}\n\n"
            "Do it this way:\n"
            f"1. Call budget_status, then list_models with modality='{kind}' and pick a fitting model and parameters.\n"
            "2. Call estimate with them. Tell me the credits and what will be left, and wait for my OK. If it does\n"
            "   not fit, propose a cheaper option (shorter, lower resolution, a faster model) or ask with\n"
            "   request_budget_increase.\n"
            f"3. After my OK, call generate_{kind if kind in ('image', 'video', 'music') else 'video'} with the same\n"
            "   parameters. It returns a task_id at once.\n"
            "4. Call poll_task with that task_id and wait_seconds=30 until the status is succeeded or failed.\n"
            "5. Give me the result links (and local paths if any) and the credits charged."
        )

    @server.prompt(title="Plan work within the budget")
    def plan_within_budget(goal: str) -> str:
        """Plan a multi-step job so its total estimated cost fits the remaining session budget."""
        return (
            f"Goal: {goal}\n\nCall budget_status and list_models. Draft a plan of gateway calls, call estimate for "
            "each paid step, and show me a table of steps, models and credits with the total against what is "
            "left. Do not start any paid call until I approve the plan."
        )


def serve_stdio(args: argparse.Namespace) -> None:
    """`apikey-mcp`: settings from flags and env, optionally an in-process sandbox, then MCP over stdio."""
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    with ExitStack() as stack:
        if args.sandbox:
            overrides.update(_start_sandbox(stack))
        settings = Settings(**overrides)
        configure(settings.log_level)
        log.info("serving MCP over stdio against %s (budget %d credits)", settings.base_url, settings.session_budget)
        build_server(settings).run("stdio")


def _start_sandbox(stack: ExitStack) -> dict[str, str]:
    import secrets

    from .sandbox import Sandbox, SandboxServer

    key = "sk-sandbox-" + secrets.token_hex(12)
    server = stack.enter_context(SandboxServer(Sandbox([key])))
    log.warning("using the SANDBOX gateway at %s: made-up models and prices, nothing is billed", server.url)
    return {"base_url": server.url, "api_key": key}


__all__ = ["build_server", "serve_stdio"]
