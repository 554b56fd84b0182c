"""Prometheus metrics, on a listener of their own (`--metrics-port`); the MCP port never serves them.

Counters and histograms are kept in this process as events happen; the credit figures per principal are read
from the ledger at each scrape, on the server's event loop, so they equal the ledger's (every replica of one
PostgreSQL ledger reports the same values: aggregate them with `max by (principal)`). Principal labels are
bounded: the `max_principals` biggest spenders by name, the rest summed under `principal="_other"`.

Other modules report through the functions below (`metrics.background_error(job)`, ...), which do nothing
when metrics are off: one `None` check.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .budget import LedgerStore, Totals

log = logging.getLogger(__name__)
OTHER = "_other"
SCRAPE_SECONDS = 5.0  # longest a scrape waits for the ledger before it reports it unavailable
_TASK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_active: Metrics | None = None


@dataclass
class Source:
    """What the scrape reads live: the ledger, and the task counts by state, both on the server's loop."""

    store: LedgerStore
    task_states: Callable[[], Tally[str]]
    token: Any  # anyio's event loop token: the scrape runs in the listener's thread


class Metrics:
    def __init__(self, max_principals: int = 100) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.max_principals = max_principals
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.tool_calls = Counter("apikey_tool_calls", "Tool calls by outcome", ["tool", "outcome"], registry=r)
        self.gateway_seconds = Histogram(
            "apikey_gateway_request_seconds",
            "Gateway requests by route template and status",
            ["route", "status"],
            registry=r,
        )
        self.gateway_polls = Counter("apikey_gateway_polls", "Task polls sent to the gateway", registry=r)
        self.task_seconds = Histogram(
            "apikey_task_duration_seconds",
            "Media tasks from create to end",
            ["modality"],
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter("apikey_callbacks", "Gateway callbacks by result", ["result"], registry=r)
        self.auth_failures = Counter("apikey_auth_failures", "Requests with a wrong token", registry=r)
        self.limit_refusals = Counter("apikey_limit_refusals", "Requests refused by a limit", ["limit"], registry=r)
        self.background_errors = Counter("apikey_background_errors", "Background job errors", ["job"], registry=r)
        self.budget_alerts = Counter("apikey_budget_alerts", "Budget alerts sent", ["threshold"], registry=r)
        self.ledger_seconds = Histogram("apikey_ledger_seconds", "Ledger operations", ["op"], registry=r)
        self.sources: list[Source] = []
        r.register(_Live(self))
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics at host:port in a thread of its own; the port it got."""
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Live:
    """The collector read at each scrape: credits per principal from the ledger, tasks by state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        spent = CounterMetricFamily(
            "apikey_credits_spent", "Lifetime credits spent (the ledger's)", labels=["principal"]
        )
        reserved = GaugeMetricFamily(
            "apikey_credits_reserved", "Credits held by open reservations", labels=["principal"]
        )
        budget = GaugeMetricFamily("apikey_budget_credits", "The principal's budget", labels=["principal"])
        tasks = GaugeMetricFamily("apikey_tasks", "Tasks in memory by state", labels=["state"])
        up = GaugeMetricFamily("apikey_ledger_up", "1 if the last scrape could read the ledger, else 0")
        ok = 1
        for source in list(self.metrics.sources):
            try:
                rows = _from_loop(source, _principals, source.store)
                states = _from_loop(source, None, source.task_states)
            except Exception as exc:  # an unreachable ledger, a loop that is ending: reported, never raised
                log.warning("metrics: could not read the ledger (%s)", exc)
                ok = 0
                continue
            for name, totals in bound(rows, self.metrics.max_principals):
                spent.add_metric([name], totals.spent)
                reserved.add_metric([name], totals.reserved)
                budget.add_metric([name], totals.budget)
            for state, count in sorted(states.items()):
                tasks.add_metric([state], count)
        up.add_metric([], ok)
        yield from (spent, reserved, budget, tasks, up)


async def _principals(store: LedgerStore) -> list[tuple[str, Totals]]:
    import anyio

    with anyio.fail_after(SCRAPE_SECONDS):
        return await store.principals()


def _from_loop(source: Source, coroutine: Any, arg: Any) -> Any:
    import anyio.from_thread

    if coroutine is None:
        return anyio.from_thread.run_sync(arg, token=source.token)
    return anyio.from_thread.run(coroutine, arg, token=source.token)


def bound(rows: list[tuple[str, Totals]], limit: int) -> list[tuple[str, Totals]]:
    """The `limit` biggest spenders by name, the rest summed under `_other`."""
    ranked = sorted(rows, key=lambda row: (-row[1].spent, row[0]))
    named, rest = ranked[:limit], ranked[limit:]
    if rest:
        summed = {f: sum(getattr(t, f) for _, t in rest) for f in ("budget", "spent", "reserved")}
        named.append((OTHER, replace(rest[0][1], **summed)))
    return named


# ------------------------------------------------------------ what the rest of the server calls


def install(metrics: Metrics | None) -> None:
    """Make `metrics` the process's (None: metrics off)."""
    global _active
    _active = metrics


def active() -> Metrics | None:
    return _active


def watch(store: LedgerStore, task_states: Callable[[], Tally[str]]) -> Callable[[], None]:
    """Read this ledger and these tasks at each scrape (call from the server's loop); returns the undo."""
    if _active is None:
        return lambda: None
    import anyio.lowlevel

    metrics, source = _active, Source(store, task_states, anyio.lowlevel.current_token())
    metrics.sources.append(source)
    return lambda: metrics.sources.remove(source)


def tool_call(tool: str, outcome: str) -> None:
    if _active is not None:
        _active.tool_calls.labels(tool, outcome).inc()


def gateway_request(route: str, status: str, seconds: float) -> None:
    if _active is not None:
        _active.gateway_seconds.labels(route, status).observe(seconds)


def gateway_poll() -> None:
    if _active is not None:
        _active.gateway_polls.inc()


def task_ended(modality: str | None, seconds: float) -> None:
    if _active is not None:
        _active.task_seconds.labels(modality or "unknown").observe(seconds)


def callback(result: str) -> None:
    if _active is not None:
        _active.callbacks.labels(result).inc()


def auth_failure() -> None:
    if _active is not None:
        _active.auth_failures.inc()


def budget_alert(threshold: int) -> None:
    """An alert sent at `threshold` percent of a principal's budget (once per threshold per period)."""
    if _active is not None:
        _active.budget_alerts.labels(str(threshold)).inc()


def limit_refusal(limit: str) -> None:
    if _active is not None:
        _active.limit_refusals.labels(limit).inc()


def background_error(job: str) -> None:
    """A background job (a watcher, a settlement retry, a supervisor's job) failed once."""
    if _active is not None:
        _active.background_errors.labels(job).inc()


@contextmanager
def ledger_op(op: str) -> Iterator[None]:
    if _active is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        _active.ledger_seconds.labels(op).observe(time.perf_counter() - started)


__all__ = [
    "Metrics",
    "auth_failure",
    "background_error",
    "callback",
    "gateway_poll",
    "gateway_request",
    "install",
    "ledger_op",
    "limit_refusal",
    "task_ended",
    "tool_call",
    "watch",
]
