"""The hosted server: the SDK's Streamable HTTP and SSE transports in one Starlette app, run by uvicorn.

Routes: `/mcp` (Streamable HTTP), `/sse` + `/messages/` (SSE), `GET /healthz` and `GET /readyz` (health.py),
and `POST /webhooks/api-key` (the gateway's signed callbacks). Who may use the MCP routes is access.py's
concern (operator tokens, OAuth or both); Host and Origin are checked against allow-lists (DNS rebinding);
request bodies are capped. `create_app` composes the app from small parts; whatever differs between serving
alone and as one replica of many comes from its hosting mode (mode.py), chosen in `_hosting_mode`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from ..accounts import Accounts
from ..budget import LedgerStore
from ..config import Settings
from ..errors import ConfigError
from ..gateway import GatewayClient
from ..replicas.mode import Replica, replica_mode
from ..server import build_server
from ..sessions import state_file as ledger_file
from ..stores import describe, open_store, ready, store_for
from .access import Access, Door
from .access_log import AccessLog
from .auth import load_tokens
from .callbacks import CallbackReceiver
from .guards import AuthThrottle, HostCheck, is_loopback, transport_security
from .health import Health
from .limits import SessionLimit, StreamLimit
from .mode import HostingMode, Standalone
from .updates import ResourceUpdates

log = logging.getLogger(__name__)


def _check(settings: Settings, tokens: dict[str, str]) -> None:
    """Refuse to start where clients or callbacks could not be verified."""
    if not tokens and settings.oauth_issuer is None and not is_loopback(settings.host):
        raise ConfigError(
            f"Refusing to serve on {settings.host} with no client authentication: anyone who reaches it could "
            "spend your credits. Set APIKEY_MCP_AUTH_TOKENS (name=token pairs), --oauth-issuer, or bind 127.0.0.1."
        )
    if settings.public_url and settings.webhook_secret is None:
        raise ConfigError(
            "--public-url makes the gateway send signed callbacks here; set APIKEY_WEBHOOK_SECRET to the "
            "secret that signs them, so they can be verified."
        )
    if settings.oauth_issuer and not (settings.public_url or settings.oauth_audience or is_loopback(settings.host)):
        raise ConfigError(
            "--oauth-issuer needs this server's public URL (--public-url), which tokens must name as their "
            "audience (<public-url>/mcp); or set APIKEY_OAUTH_AUDIENCE."
        )


def create_app(
    settings: Settings,
    *,
    poll_sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    poll_clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The hosted app; `poll_sleep` and `poll_clock` are the task watchers' time (a test may own it)."""
    tokens = load_tokens(settings)
    _check(settings, tokens)
    ledger = _Ledger.configure(settings)
    client = GatewayClient(
        settings.base_url, settings.api_key, auth_scheme=settings.auth_scheme, other_secrets=settings.secrets()
    )
    mode = _hosting_mode(settings, client, ledger, poll_sleep, poll_clock)
    updates = ResourceUpdates(
        mode.accounts.owns_task,
        listens_per_principal=settings.max_listens_per_principal,
        listens_total=settings.max_sessions,
    )
    mode.tell(updates)
    server = build_server(
        settings,
        accounts=mode.accounts,
        subscriptions=updates.bus,
        request_state_security=mode.request_state_security,
    )
    updates.install(server)
    base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    access = Access.configure(settings, tokens, resource=settings.oauth_audience or f"{base}/mcp")
    mcp_routes, endpoints = _mcp_routes(settings, server, mode, access)
    routes = [*_service_routes(settings, mode, access, ledger.store), *mcp_routes]
    running = _Running(settings, client, access, ledger, mode, server, endpoints)
    throttle = Middleware(AuthThrottle, limit=settings.auth_failures_per_minute, guarded=_guarded)
    middleware = [Middleware(AccessLog), throttle, *access.middleware()]
    app = Starlette(routes=routes, middleware=middleware, lifespan=running.lifespan)
    app.state.accounts = mode.accounts
    app.state.updates = updates
    return app


@dataclass
class _Ledger:
    """The ledger store this app uses: PostgreSQL when a database URL is set, else the SQLite file."""

    store: LedgerStore
    where: str  # for the logs
    database_url: str | None

    @classmethod
    def configure(cls, settings: Settings) -> _Ledger:
        database_url = settings.database_url.get_secret_value() if settings.database_url else None
        state_file = None if database_url else ledger_file(settings)  # a sandbox's ledger is a file of its own
        store = store_for(database_url=database_url, state_file=state_file)
        return cls(store, describe(database_url=database_url, state_file=state_file), database_url)


def _hosting_mode(
    settings: Settings,
    client: GatewayClient,
    ledger: _Ledger,
    poll_sleep: Callable[[float], Awaitable[None]],
    poll_clock: Callable[[], float],
) -> HostingMode:
    """Alone, or one of many replicas behind a load balancer (on a PostgreSQL ledger): the one place they part."""
    if ledger.database_url and replica_mode(settings):
        return Replica.configure(settings, client, ledger.store, ledger.database_url)
    accounts = Accounts(settings, client, ledger.store, hosted=True, poll_sleep=poll_sleep, poll_clock=poll_clock)
    return Standalone(accounts)


def _service_routes(settings: Settings, mode: HostingMode, access: Access, store: LedgerStore) -> list[BaseRoute]:
    """Health, the OAuth metadata and the gateway's callbacks."""
    health = Health(store, mode.accounts.supervisor, mode.listener)
    routes: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *access.metadata_routes(),
    ]
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        receiver = CallbackReceiver(mode.apply_callback, secret, max_bytes=settings.max_body_bytes)
        routes.append(Route("/webhooks/api-key", receiver.handle, methods=["POST"]))
    return routes


def _mcp_routes(
    settings: Settings, server: MCPServer, mode: HostingMode, access: Access
) -> tuple[list[BaseRoute], list[str]]:
    """The MCP transports behind each door (its guard, then the Host check), and their names for the start log."""
    security = transport_security(settings)
    mcp_app = _streamable(settings, server, security, stateless=mode.stateless) if _streamable_on(settings) else None
    sse = settings.transport in ("http", "sse") and mode.serves_sse
    routes: list[BaseRoute] = []
    endpoints: list[str] = []
    for door in access.doors:
        if mcp_app is not None:
            routes.append(Route(f"{door.prefix}/mcp", HostCheck(door.guard(mcp_app), security)))
            endpoints.append(f"{door.prefix}/mcp ({door.kind})")
        if sse:
            routes += _sse_routes(settings, server, security, door)
            endpoints.append(f"{door.prefix}/sse ({door.kind})")
    return routes, endpoints


def _streamable_on(settings: Settings) -> bool:
    return settings.transport in ("http", "streamable-http")


def _streamable(
    settings: Settings, server: MCPServer, security: TransportSecuritySettings, *, stateless: bool
) -> ASGIApp:
    streamable_app = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=security,
        max_request_body_size=settings.max_body_bytes,
        host=settings.host,
        max_sessions=settings.max_sessions,
        stateless_http=stateless,
    )
    return SessionLimit(_asgi(streamable_app.routes[0]), server.session_manager, settings.max_sessions_per_principal)


def _sse_routes(
    settings: Settings, server: MCPServer, security: TransportSecuritySettings, door: Door
) -> list[BaseRoute]:
    sse = server.sse_app(
        sse_path=f"{door.prefix}/sse",
        message_path=f"{door.prefix}/messages/",
        transport_security=security,
        max_request_body_size=settings.max_body_bytes,
        host=settings.host,
    )
    get_sse, post = sse.routes[0], sse.routes[1]
    stream = StreamLimit(_asgi(get_sse), settings.max_sse_streams_per_principal)
    return [
        Route(f"{door.prefix}/sse", HostCheck(door.guard(stream), security), methods=["GET"]),
        Mount(f"{door.prefix}/messages", app=HostCheck(door.guard(_asgi(post)), security)),
    ]


@dataclass
class _Running:
    """What the app's lifespan enters, in order, and what it says when it starts and stops."""

    settings: Settings
    client: GatewayClient
    access: Access
    ledger: _Ledger
    mode: HostingMode
    server: MCPServer
    endpoints: list[str]

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.client)
            await stack.enter_async_context(self.access)
            stack.push_async_callback(self.ledger.store.aclose)
            await ready(self.ledger.store)
            await stack.enter_async_context(self.mode.accounts.running())
            await stack.enter_async_context(self.mode.running())
            if _streamable_on(self.settings):
                await stack.enter_async_context(self.server.session_manager.run())
            self._log_start(getattr(app.state, "listening", f"{self.settings.host}:{self.settings.port}"))
            yield
        log.info("stopped; the ledger (%s) has every budget, reservation and task id", self.ledger.where)

    def _log_start(self, listening: str) -> None:
        """`listening` is set by serve() once the socket is bound."""
        settings = self.settings
        public = f" (public URL {settings.public_url})" if settings.public_url else ""
        log.info(
            "serving %s, listening on %s%s: %s (ledger: %s)",
            settings.transport,
            listening,
            public,
            ", ".join(self.endpoints),
            self.ledger.where,
        )
        if not self.access.doors[0].authenticated:
            log.warning("serving with NO client authentication: anyone who reaches %s can spend the budget", listening)


def _guarded(path: str) -> bool:
    """Routes where a failed authentication counts against the client's address (not the gateway's callbacks)."""
    return not path.startswith(("/healthz", "/readyz", "/webhooks/", "/.well-known/"))


def _asgi(route: BaseRoute) -> ASGIApp:
    """The ASGI app behind one of the SDK's routes, to mount again behind our own guards."""
    assert isinstance(route, Route | Mount), route
    return route.app


async def _probe(database_url: str) -> None:
    async with open_store(database_url=database_url):
        pass


def serve(settings: Settings, *, starting: Callable[[], None] = lambda: None) -> None:
    """Check the configuration (ConfigError), call `starting`, then serve until stopped."""
    app = create_app(settings)
    if settings.database_url is not None:  # an unreachable database: a clear refusal now, not a failed startup
        anyio.run(_probe, settings.database_url.get_secret_value())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    sock = config.bind_socket()  # bound here, so that the start log says where it listens (even with port 0)
    app.state.listening = _address(sock.getsockname())
    starting()
    uvicorn.Server(config).run(sockets=[sock])


def _address(bound: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = bound[0], bound[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
