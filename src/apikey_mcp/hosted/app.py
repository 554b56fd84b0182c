"""The hosted server: the SDK's Streamable HTTP and SSE transports in one Starlette app, run by uvicorn.

Routes: `/mcp` (Streamable HTTP), `/sse` + `/messages/` (SSE), `GET /healthz`, and `POST /webhooks/api-key`
(the gateway's signed callbacks). Every MCP route needs an operator-issued bearer token when tokens are
configured; Host and Origin are checked against allow-lists (DNS rebinding); request bodies are capped.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import platformdirs
import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..accounts import Accounts
from ..config import Settings
from ..gateway import GatewayClient
from ..server import build_server
from ..stores import StoreRefusedError, describe, open_store, ready, store_for
from .auth import StaticTokenVerifier, load_tokens
from .callbacks import CallbackReceiver
from .replicas import Replica, ReplicaConfigError, replica_mode
from .updates import ResourceUpdates

log = logging.getLogger(__name__)


class HostingError(ValueError):
    """A configuration the server refuses to serve; the message says why and what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_state_file() -> Path:
    return Path(platformdirs.user_data_dir("apikey-mcp")) / "state.sqlite3"


def _allowed(settings: Settings) -> tuple[list[str], list[str]]:
    """Host headers and Origins to accept: loopback names when bound there, the public URL, the operator's."""
    names = ["127.0.0.1", "localhost", "[::1]"] if is_loopback(settings.host) else [settings.host]
    if settings.public_url:
        names.append(urlsplit(settings.public_url).netloc)
    names += settings.allowed_hosts
    hosts = [h for name in names for h in ([name] if urlsplit(f"//{name}").port else [name, f"{name}:*"])]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return hosts, origins


def _check(settings: Settings, tokens: dict[str, str]) -> None:
    if not tokens and not is_loopback(settings.host):
        raise HostingError(
            f"Refusing to serve on {settings.host} with no client authentication: anyone who reaches it could "
            "spend your credits. Set APIKEY_MCP_AUTH_TOKENS (name=token pairs) or bind 127.0.0.1."
        )
    if settings.public_url and settings.webhook_secret is None:
        raise HostingError(
            "--public-url makes the gateway send signed callbacks here; set APIKEY_WEBHOOK_SECRET to the "
            "secret that signs them, so they can be verified."
        )


def create_app(settings: Settings) -> Starlette:
    tokens = load_tokens(settings)
    _check(settings, tokens)
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    state_file = None if database_url else settings.state_file or default_state_file()
    try:
        store = store_for(database_url=database_url, state_file=state_file)
    except StoreRefusedError as exc:
        raise HostingError(str(exc)) from None
    where = describe(database_url=database_url, state_file=state_file)
    client = GatewayClient(settings.base_url, settings.api_key, auth_scheme=settings.auth_scheme)
    updates = ResourceUpdates()
    replica = None
    if database_url and replica_mode(settings):  # one of many replicas behind a load balancer
        try:
            replica = Replica.configure(settings, client, store, database_url, updates)
        except ReplicaConfigError as exc:
            raise HostingError(str(exc)) from None
    accounts = replica.accounts if replica else Accounts(settings, client, store, hosted=True)
    accounts.task_listeners.append(updates.task_changed)

    verifier = StaticTokenVerifier(tokens) if tokens else None
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    auth = AuthSettings(issuer_url=base, resource_server_url=None) if verifier else None
    server = build_server(settings, accounts=accounts, auth=auth, token_verifier=verifier, subscriptions=updates.bus,
                          request_state_security=replica.security if replica else None)  # fmt: skip
    updates.install(server)

    hosts, origins = _allowed(settings)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=origins)  # fmt: skip
    routes: list[BaseRoute] = [Route("/healthz", _healthz, methods=["GET"])]
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        receiver = (replica.callback_receiver(secret, max_bytes=settings.max_body_bytes) if replica
                    else CallbackReceiver(accounts, secret, max_bytes=settings.max_body_bytes))  # fmt: skip
        routes.append(Route("/webhooks/api-key", receiver.handle, methods=["POST"]))
    streamable = settings.transport in ("http", "streamable-http")
    apps = []
    if streamable:
        apps.append(server.streamable_http_app(
            streamable_http_path="/mcp", transport_security=security, max_request_body_size=settings.max_body_bytes,
            host=settings.host, stateless_http=replica is not None,
        ))  # fmt: skip
    if settings.transport in ("http", "sse") and replica is None:
        apps.append(server.sse_app(
            sse_path="/sse", message_path="/messages/", transport_security=security,
            max_request_body_size=settings.max_body_bytes, host=settings.host,
        ))  # fmt: skip
    for app in apps:
        routes += app.routes

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(client)
            stack.push_async_callback(store.aclose)
            await ready(store)
            await stack.enter_async_context(accounts.running())
            if replica is not None:
                await stack.enter_async_context(replica.running())
            if streamable:
                await stack.enter_async_context(server.session_manager.run())
            log.info("serving %s on %s (ledger: %s)", settings.transport, base, where)
            yield
        log.info("stopped; the ledger (%s) has every budget, reservation and task id", where)

    # The SDK's apps carry the same auth middleware (extract the bearer token); the outer app applies it once.
    return Starlette(routes=routes, middleware=apps[0].user_middleware, lifespan=lifespan)


async def _probe(database_url: str) -> None:
    async with open_store(database_url=database_url):
        pass


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def serve(settings: Settings) -> None:
    app = create_app(settings)
    if settings.database_url is not None:  # an unreachable database: a clear refusal now, not a failed startup
        try:
            anyio.run(_probe, settings.database_url.get_secret_value())
        except StoreRefusedError as exc:
            raise HostingError(str(exc)) from None
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds), proxy_headers=False,
    )  # fmt: skip
    uvicorn.Server(config).run()
