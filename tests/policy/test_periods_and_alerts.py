"""Budget periods renew at their boundary under the test's clock, and alerts reach a real HTTP receiver once
per threshold per period, signed, on every store."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from mcp import Client

from apikey_mcp.alerts import ALERTS_TOTAL, Alerts
from apikey_mcp.budget import BudgetExceededError, LedgerStore, ReservationState
from apikey_mcp.config import Settings
from apikey_mcp.policy import Policy
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.server import build_server
from apikey_mcp.sessions import start_session
from apikey_mcp.supervisor import Supervisor
from tests.conftest import advance, wait_until
from tests.ledger.conftest import database_url, make_store
from tests.policy.receiver import SECRET, receiving
from tests.server.conftest import call, settings_for

VIDEO = {"prompt": "x", "model": "seedance-2-fast"}  # 40 credits
BEFORE_MIDNIGHT = datetime(2026, 12, 6, 23, 50, tzinfo=UTC).timestamp()  # a Sunday
AFTER_MIDNIGHT = datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC).timestamp()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        database_url()
    return request.param


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def settled(store: LedgerStore, task_id: str) -> Callable[[], object]:
    async def check() -> bool:
        found = await store.task_reservation("local", task_id)
        return found is not None and found.state == ReservationState.SETTLED

    return check


async def finish(server: SandboxServer, client: Client, store: LedgerStore, task_id: str) -> None:
    await advance(server, task_id)
    await call(client, "poll_task", task_id=task_id, wait_seconds=5)
    await wait_until(settled(store, task_id))


async def test_a_daily_budget_renews_at_midnight_utc_and_an_older_hold_settles_into_its_own_day(
    kind: str, tmp_path: Path, sandbox_server: SandboxServer, held: Sandbox
) -> None:
    clock = Clock(BEFORE_MIDNIGHT)
    settings = settings_for(sandbox_server, session_budget=100, period="day")
    async with make_store(kind, tmp_path) as store:
        async with Client(build_server(settings, store=store, clock=clock)) as client:
            first = await call(client, "generate_video", **VIDEO)
            await finish(sandbox_server, client, store, first["task_id"])
            older = await call(client, "generate_video", **VIDEO)  # made on Sunday, still running at midnight
            sunday = await call(client, "budget_status")
            clock.at = AFTER_MIDNIGHT
            monday = await call(client, "budget_status")  # renewed with no write: the period is the clock's
            newer = await call(client, "generate_video", **VIDEO)
            await finish(sandbox_server, client, store, older["task_id"])
            after = await call(client, "budget_status")
        events = await store.history("local")
    assert (sunday["spent"], sunday["reserved"], sunday["resets_at"]) == (40, 40, "2026-12-07T00:00:00Z")
    assert (monday["spent"], monday["reserved"], monday["remaining"]) == (0, 40, 60)
    assert monday["period"] == "day" and monday["resets_at"] == "2026-12-08T00:00:00Z"
    assert newer["budget"]["remaining"] == 20
    assert (after["spent"], after["reserved"]) == (0, 40), "Sunday's hold was charged to Sunday, not Monday"
    renewal = [e for e in events if e.kind == "period"]
    assert [(e.credits, e.detail) for e in renewal] == [(40, "day 2026-12-06 ended with 40 spent")]
    late = [(e.credits, e.detail) for e in events if e.kind == "settle" and e.detail]
    assert late == [(40, "period 2026-12-06T00:00:00Z")]  # the older hold's settlement, in Sunday's period


async def test_alerts_reach_a_real_receiver_once_per_threshold_signed(
    kind: str, tmp_path: Path, sandbox_server: SandboxServer, held: Sandbox
) -> None:
    sent_before = sum(ALERTS_TOTAL.values())
    with receiving() as receiver:
        settings = settings_for(
            sandbox_server, session_budget=80, alert_at=50, alert_webhook=receiver.url, alert_secret=SECRET
        )
        async with make_store(kind, tmp_path) as store:
            async with Client(build_server(settings, store=store)) as client:
                first = await call(client, "generate_video", **VIDEO)  # 40 of 80: 50%
                await wait_until(lambda: len(receiver.posts) == 1)
                second = await call(client, "generate_video", **VIDEO)  # 80 of 80: 100%
                await wait_until(lambda: len(receiver.posts) == 2)
                for task in (first, second):
                    await finish(sandbox_server, client, store, task["task_id"])
            # A restarted server (a new checker on the same ledger) finds both already sent.
            assert await Alerts(settings, store).check("local") == []
            alerts = [e for e in await store.history("local") if e.kind == "alert"]
    assert receiver.alerts() == [
        {"principal": "local", "budget": 80, "spent": 0, "reserved": 40, "threshold": 50, "period": "none"},
        {"principal": "local", "budget": 80, "spent": 0, "reserved": 80, "threshold": 100, "period": "none"},
    ]
    assert receiver.all_signed() and not receiver.all_signed("another-secret")
    assert [e.detail for e in alerts] == ["50%", "100%"]
    assert sum(ALERTS_TOTAL.values()) - sent_before == 2


async def test_an_alert_the_receiver_refuses_is_retried_with_backoff(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    with receiving(failures=2) as receiver:
        settings = Settings(alert_webhook=receiver.url, alert_secret=SECRET)
        async with make_store("memory", tmp_path) as store:
            await store.ensure_principal("p", 10)
            await store.reserve("p", 10, "all of it")
            alerts = Alerts(settings, store, sleep=sleep)
            async with anyio.create_task_group() as group:
                group.start_soon(alerts.run)
                await wait_until(lambda: alerts._checks_in is not None)
                alerts.notice("p")
                await wait_until(lambda: len(receiver.posts) == 1)
                group.cancel_scope.cancel()
    assert slept == [0.5, 1.0] and json.loads(receiver.posts[0][1])["threshold"] == 100 and receiver.all_signed()


async def test_the_call_that_crosses_a_threshold_does_not_wait_for_the_webhook(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    with receiving(held=True) as receiver:
        settings = settings_for(sandbox_server, session_budget=40, alert_webhook=receiver.url, alert_secret=SECRET)
        async with Client(build_server(settings)) as client:
            started = await call(client, "generate_video", **VIDEO)  # 40 of 40: the 100% alert
            await wait_until(lambda: receiver.arrived == 1)  # the post is in flight, held unanswered...
            status = await call(client, "budget_status")  # ...and the server goes on answering meanwhile
            receiver.gate.set()
            await wait_until(lambda: len(receiver.posts) == 1)
    assert started["task_id"] in sandbox.tasks and status["remaining"] == 0
    assert receiver.alerts()[0]["threshold"] == 100 and receiver.all_signed()


async def test_a_stdio_session_begun_after_its_period_renewed_gets_its_session_budget_and_no_more(
    kind: str, tmp_path: Path
) -> None:
    """Regression: the new session's budget was set from the last period's spending, which the renewal then
    dropped, so a session could spend that much more than its session budget."""
    daily = Policy(period="day")
    async with make_store(kind, tmp_path) as store:
        await start_session(store, "alice", 1000, daily, now=BEFORE_MIDNIGHT)
        held = await store.reserve("alice", 800, "video", now=BEFORE_MIDNIGHT)
        assert await store.settle(held.id, 800)
        await start_session(store, "alice", 1000, daily, now=AFTER_MIDNIGHT)
        assert (await store.totals("alice", now=AFTER_MIDNIGHT)).remaining == 1000
        with pytest.raises(BudgetExceededError):
            await store.reserve("alice", 1001, "video", now=AFTER_MIDNIGHT)
        assert (await store.reserve("alice", 1000, "video", now=AFTER_MIDNIGHT)).credits == 1000


async def over_budget(store: LedgerStore, *principals: str) -> None:
    """Each of `principals` holds all of its 10 credits: its 100% alert is due."""
    for principal in principals:
        await store.ensure_principal(principal, 10)
        await store.reserve(principal, 10, "all of it")


async def instantly(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def supervised(alerts: Alerts) -> AsyncIterator[Supervisor]:
    """The alert worker as the server runs it: a service of the supervisor, restarted at once when it fails."""
    supervisor = Supervisor(sleep=instantly)
    async with supervisor.running():
        supervisor.service(alerts.run, name="alerts")
        await wait_until(lambda: alerts._checks_in is not None)  # running: notices are taken
        yield supervisor


async def test_a_restarted_alert_worker_checks_again_a_principal_queued_before_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a restart kept the queued marks of the checks its failure dropped, so a principal waiting to be
    checked when the worker failed was never checked again: every later notice of it was taken as queued."""
    delivering, failing = anyio.Event(), anyio.Event()

    async def sleep(seconds: float) -> None:  # between posts of one alert: the first time, the worker fails
        if not failing.is_set():
            delivering.set()
            await failing.wait()
            raise RuntimeError("a fault in the alert worker")

    with receiving(failures=1) as receiver:
        async with make_store("memory", tmp_path) as store:
            await over_budget(store, "first", "waiting", "later")
            checking: list[str] = []
            policy = store.policy

            async def slow_policy(principal: str) -> Policy:
                checking.append(principal)
                if principal == "slow":  # the checks wait here until the worker fails
                    await anyio.sleep_forever()
                return await policy(principal)

            monkeypatch.setattr(store, "policy", slow_policy)
            alerts = Alerts(Settings(alert_webhook=receiver.url, alert_secret=SECRET), store, sleep=sleep)
            async with supervised(alerts) as supervisor:
                alerts.notice("first")  # checked; its post is refused, and the worker waits to post it again
                await wait_until(delivering.is_set)
                alerts.notice("slow")
                await wait_until(lambda: checking[-1:] == ["slow"])
                alerts.notice("waiting")  # queued behind "slow" when the worker fails
                failing.set()
                await wait_until(lambda: supervisor.restarts["alerts"] == 1 and alerts._checks_in is not None)
                alerts.notice("waiting")  # its next change
                alerts.notice("later")  # checked after "waiting" (one queue, one checker, one poster)
                await wait_until(lambda: "later" in [a["principal"] for a in receiver.alerts()])
    posted = [a["principal"] for a in receiver.alerts()]
    assert "waiting" in posted, f"a principal queued before the worker restarted was never checked again: {posted}"
    assert posted == ["waiting", "later"] and supervisor.failures["alerts"] == 1


@pytest.mark.parametrize(
    "webhook",
    [
        pytest.param("http://127.0.0.1:80 80/alerts", id="a space in the port"),  # httpx2.InvalidURL
        pytest.param("http://127.0.0.1:99999/alerts", id="a port out of range"),  # OverflowError, in a task group
    ],
)
async def test_a_webhook_url_no_client_takes_is_logged_and_later_alerts_still_go_out(
    webhook: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the post raised out of the worker, which failed with each alert and was started again after a
    backoff; the alerts due meanwhile were dropped."""
    caplog.set_level(logging.WARNING, logger="apikey_mcp.alerts")

    def logged(text: str) -> Callable[[], bool]:
        return lambda: any(text in r.getMessage() for r in caplog.records if r.name == "apikey_mcp.alerts")

    def undelivered(principal: str) -> Callable[[], bool]:
        return logged(f'"principal":"{principal}"')

    sent_before = sum(ALERTS_TOTAL.values())
    async with make_store("memory", tmp_path) as store:
        await over_budget(store, "first", "second")
        alerts = Alerts(Settings(alert_webhook=webhook, alert_secret=SECRET), store, sleep=instantly)
        async with supervised(alerts) as supervisor:
            alerts.notice("first")
            await wait_until(lambda: undelivered("first")() or supervisor.failures["alerts"] > 0)
            failures = dict(supervisor.failures)
            assert failures == {}, f"the alert worker failed on the webhook URL {webhook!r}: {failures}"
            alerts.notice("second")
            await wait_until(undelivered("second"))
    assert logged("budget alert: first has used 100%")() and logged("budget alert: second has used 100%")()
    assert sum(ALERTS_TOTAL.values()) - sent_before == 2
    assert supervisor.restarts["alerts"] == 0
