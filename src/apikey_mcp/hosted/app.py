"""The hosted server: the SDK's Streamable HTTP and SSE transports in one Starlette app, run by uvicorn.

Routes: `/mcp` (Streamable HTTP), `/sse` + `/messages/` (SSE), `GET /healthz` and `GET /readyz` (health.py),
and `POST /webhooks/api-key` (the gateway's signed callbacks). Who may use the MCP routes is access.py's
concern (operator tokens, OAuth or both); Host and Origin are checked against allow-lists (DNS rebinding);
request bodies are capped.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from ..accounts import Accounts
from ..config import Settings
from ..errors import ConfigError
from ..gateway import GatewayClient
from ..replicas.mode import Replica, replica_mode
from ..server import build_server
from ..sessions import state_file as ledger_file
from ..stores import describe, open_store, ready, store_for
from .access import Access
from .access_log import AccessLog
from .auth import load_tokens
from .callbacks import CallbackReceiver
from .guards import AuthThrottle, HostCheck
from .health import Health
from .limits import SessionLimit, StreamLimit
from .updates import ResourceUpdates

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    state_file = None if database_url else ledger_file(settings)  # a sandbox's ledger is a file of its own
    store = store_for(database_url=database_url, state_file=state_file)
    where = describe(database_url=database_url, state_file=state_file)
    client = GatewayClient(
        settings.base_url, settings.api_key, auth_scheme=settings.auth_scheme, other_secrets=settings.secrets()
    )
    accounts: Accounts | None = None  # the updates ask it whose a task is; made just below

    async def owns(principal: str, task_id: str) -> bool:
        assert accounts is not None
        return await accounts.loads(principal, task_id)

    updates = ResourceUpdates(
        owns, listens_per_principal=settings.max_listens_per_principal, listens_total=settings.max_sessions
    )
    replica = None
    if database_url and replica_mode(settings):  # one of many replicas behind a load balancer
        replica = Replica.configure(settings, client, store, database_url, updates)
        accounts = replica.accounts
    else:
        accounts = Accounts(settings, client, store, hosted=True, poll_sleep=poll_sleep, poll_clock=poll_clock)
    accounts.task_listeners.append(updates.task_changed)
    server = build_server(
        settings,
        accounts=accounts,
        subscriptions=updates.bus,
        request_state_security=replica.security if replica else None,
    )
    updates.install(server)

    base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    access = Access.configure(settings, tokens, resource=settings.oauth_audience or f"{base}/mcp")
    hosts, origins = _allowed(settings)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
    health = Health(store, accounts.supervisor, (lambda: replica.fleet.connected) if replica else None)
    routes: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *access.metadata_routes(),
    ]
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        receiver = (
            replica.callback_receiver(secret, max_bytes=settings.max_body_bytes)
            if replica
            else CallbackReceiver(accounts, secret, max_bytes=settings.max_body_bytes)
        )
        routes.append(Route("/webhooks/api-key", receiver.handle, methods=["POST"]))
    streamable = settings.transport in ("http", "streamable-http")
    mcp_app: ASGIApp | None = None
    if streamable:
        streamable_app = server.streamable_http_app(
            streamable_http_path="/mcp",
            transport_security=security,
            max_request_body_size=settings.max_body_bytes,
            host=settings.host,
            max_sessions=settings.max_sessions,
            stateless_http=replica is not None,
        )
        limit = settings.max_sessions_per_principal
        mcp_app = SessionLimit(_asgi(streamable_app.routes[0]), server.session_manager, limit)
    endpoints: list[str] = []
    for door in access.doors:
        if mcp_app is not None:
            routes.append(Route(f"{door.prefix}/mcp", HostCheck(door.guard(mcp_app), security)))
            endpoints.append(f"{door.prefix}/mcp ({door.kind})")
        if settings.transport in ("http", "sse") and replica is None:  # SSE sessions live in one process
            sse = server.sse_app(
                sse_path=f"{door.prefix}/sse",
                message_path=f"{door.prefix}/messages/",
                transport_security=security,
                max_request_body_size=settings.max_body_bytes,
                host=settings.host,
            )
            get_sse, post = sse.routes[0], sse.routes[1]
            stream = StreamLimit(_asgi(get_sse), settings.max_sse_streams_per_principal)
            routes.append(Route(f"{door.prefix}/sse", HostCheck(door.guard(stream), security), methods=["GET"]))
            routes.append(Mount(f"{door.prefix}/messages", app=HostCheck(door.guard(_asgi(post)), security)))
            endpoints.append(f"{door.prefix}/sse ({door.kind})")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(client)
            await stack.enter_async_context(access)
            stack.push_async_callback(store.aclose)
            await ready(store)
            await stack.enter_async_context(accounts.running())
            if replica is not None:
                await stack.enter_async_context(replica.running())
            if streamable:
                await stack.enter_async_context(server.session_manager.run())
            listening = getattr(app.state, "listening", f"{settings.host}:{settings.port}")  # set by serve()
            public = f" (public URL {settings.public_url})" if settings.public_url else ""
            log.info(
                "serving %s, listening on %s%s: %s (ledger: %s)",
                settings.transport,
                listening,
                public,
                ", ".join(endpoints),
                where,
            )
            if not access.doors[0].authenticated:
                log.warning(
                    "serving with NO client authentication: anyone who reaches %s can spend the budget", listening
                )
            yield
        log.info("stopped; the ledger (%s) has every budget, reservation and task id", where)

    throttle = Middleware(AuthThrottle, limit=settings.auth_failures_per_minute, guarded=_guarded)
    app = Starlette(
        routes=routes, middleware=[Middleware(AccessLog), throttle, *access.middleware()], lifespan=lifespan
    )
    app.state.accounts = accounts
    app.state.updates = updates
    return app


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
