"""The task watcher knows what it waits for: it polls on a close schedule while an agent waits, answers from
a fresh state without asking the gateway, and stops once the task has ended.

Time belongs to the test: the watchers sleep on and tell time by `ManualTime`, and the sandbox holds its tasks
until the test moves them on, so nothing here races a real timer.
"""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import ImageRequest, Task
from apikey_mcp.polling import MAX_TYPICAL_MODELS, Durations, Known, Pacer, Schedule
from apikey_mcp.sandbox import Sandbox, SandboxServer
from apikey_mcp.server import build_server
from apikey_mcp.stores import MemoryLedgerStore
from apikey_mcp.tasks import TaskRegistry
from tests.conftest import KEY, advance, wait_until
from tests.server.conftest import call, local_ledger, settings_for

TASK_GETS = "GET /v1/tasks/{task_id}"
DEFAULT_POLLING = {"poll_interval": 1.0, "max_poll_interval": 5.0, "fresh_seconds": 1.0}


class ManualTime:
    """The watchers' clock and sleep: a sleeper wakes only when the test moves the clock past its deadline."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.naps: list[float] = []  # every sleep asked for, in order
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        entry = (self.now + seconds, anyio.Event())
        self.naps.append(seconds)
        self._sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, wake in self._sleepers:
            if deadline <= self.now + 1e-9:
                wake.set()


@pytest.fixture
def time_() -> ManualTime:
    return ManualTime()


def server_for(sandbox_server: SandboxServer, time_: ManualTime):
    settings = settings_for(sandbox_server, **DEFAULT_POLLING)
    return build_server(settings, poll_sleep=time_.sleep, poll_clock=time_.clock)


async def test_a_waiting_poll_is_woken_by_the_watchers_poll_aimed_at_the_estimated_end(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime
) -> None:
    async with Client(server_for(sandbox_server, time_)) as client:
        task_id = (await call(client, "generate_image", prompt="a lighthouse", model="flux-schnell"))["task_id"]
        await wait_until(lambda: time_.naps == [1.0])  # nobody waits yet: the first poll after poll_interval
        result: dict = {}
        seen: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(message)

        async def wait() -> None:
            answer = await client.call_tool(
                "poll_task", {"task_id": task_id, "wait_seconds": 55}, progress_callback=on_progress
            )
            result.update(answer.structured_content or {})

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await wait_until(lambda: len(time_.naps) == 2)  # the waiter woke the watcher to plan again
            assert held.requests[TASK_GETS] == 0, "the create's answer was fresh: no poll of its own"

            await advance(sandbox_server, task_id, "running", progress=0.25)
            time_.advance(1.0)
            await wait_until(lambda: len(time_.naps) == 3 and "running" in (seen[-1] or ""))
            assert held.requests[TASK_GETS] == 1
            # 25 % after 1 s: about 4 s in all, so the next poll is aimed just past the end, 3 s from now
            assert 3.0 < time_.naps[-1] < 3.5

            await advance(sandbox_server, task_id)
            time_.advance(time_.naps[-1])
        await wait_until(lambda: time_.sleeping == 0)  # the watcher has stopped: the task ended

    assert result["status"] == "succeeded" and result["budget"]["reserved"] == 0
    assert held.requests[TASK_GETS] == 2, "two polls by the watcher and none by poll_task"


async def test_poll_task_answers_from_a_fresh_state_and_asks_the_gateway_once_it_is_stale(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime
) -> None:
    async with Client(server_for(sandbox_server, time_)) as client:
        task_id = (await call(client, "generate_image", prompt="a harbour", model="flux-schnell"))["task_id"]
        fresh = [await call(client, "poll_task", task_id=task_id, wait_seconds=0) for _ in range(3)]
        gets_while_fresh = held.requests[TASK_GETS]
        await advance(sandbox_server, task_id, "running", progress=0.4)
        time_.now += 1.5  # older than fresh_seconds, but the watcher's sleep (1 s) is left unwoken
        stale = await call(client, "poll_task", task_id=task_id, wait_seconds=0)
        again = await call(client, "poll_task", task_id=task_id, wait_seconds=0)

    assert [r["status"] for r in fresh] == ["pending"] * 3 and gets_while_fresh == 0
    assert stale["status"] == "running" and stale["progress"] == 0.4
    assert again == stale and held.requests[TASK_GETS] == 1, "the stale look asked once; the next was fresh"


async def test_without_a_waiter_the_watcher_backs_off_and_stops_once_the_task_ended(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime
) -> None:
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, **DEFAULT_POLLING)
    server = build_server(settings, store=store, poll_sleep=time_.sleep, poll_clock=time_.clock)

    async def settled() -> bool:
        return (await store.totals("local")).reserved == 0

    async with Client(server) as client:
        task_id = (await call(client, "generate_image", prompt="a dune", model="flux-schnell"))["task_id"]
        for naps in range(1, 6):
            await wait_until(lambda n=naps: len(time_.naps) == n)
            time_.advance(time_.naps[-1])
        await wait_until(lambda: len(time_.naps) == 6)
        await advance(sandbox_server, task_id)
        time_.advance(time_.naps[-1])
        await wait_until(settled)  # by the watcher, which then stops without another nap

    assert time_.sleeping == 0 and len(time_.naps) == 6
    assert time_.naps == sorted(time_.naps) and time_.naps[0] == 1.0 and time_.naps[-1] > 5.0
    assert held.requests[TASK_GETS] == 6


@pytest.mark.parametrize(
    ("known", "low", "high"),
    [
        # someone waits, 50 % at 10 s of age: the end is due in 10 s, but progress keeps coming every 5 s
        (Known(10, 0, 3, 0.5, 10, None, True), 5.0, 5.0),
        # nobody waits: aimed 5 % + 50 ms past the estimated end, so the reservation still settles promptly
        (Known(10, 0, 3, 0.5, 10, None, False), 11.04, 11.06),
        # someone waits on a task that should have ended: soon, but no sooner than a tenth of its age
        (Known(20, 0, 5, 0.99, 20, None, True), 2.0, 2.0),
        # no progress, but this model's tasks took 8 s here: aim past that
        (Known(5, 0, 1, None, None, 8.0, True), 3.44, 3.46),
        # no estimate at all: back off from poll_interval by 1.5 per poll, up to the ceiling
        (Known(3, 0, 2, None, None, None, True), 2.25, 2.25),
        (Known(60, 0, 9, None, None, None, True), 5.0, 5.0),
        (Known(60, 0, 9, None, None, None, False), 30.0, 30.0),
        # the last request was 4 s ago and the estimated end has passed: now
        (Known(20, 4, 5, 0.9, 16, None, True), 0.0, 0.0),
        # ... and if the end is still far: only what is left of the ceiling's 5 s
        (Known(20, 4, 5, 0.5, 16, None, True), 1.0, 1.0),
    ],
)
def test_the_schedule_without_callbacks(known: Known, low: float, high: float) -> None:
    assert low <= Schedule(first=1.0, waiting_max=5.0).delay(known) <= high


def test_with_callbacks_polling_is_a_slow_jittered_fallback_whoever_waits() -> None:
    schedule = Schedule(callbacks=True)
    first = [schedule.delay(Known(0, 0, 0, None, None, None, waiting)) for waiting in (True, False) * 50]
    later = [schedule.delay(Known(900, 0, 8, 0.5, 900, None, True)) for _ in range(100)]
    assert all(54 <= d <= 66 for d in first) and len(set(first)) > 50  # spread, so a burst does not poll in step
    assert all(270 <= d <= 330 for d in later)


def test_fallback_polls_take_turns_so_a_burst_of_open_tasks_costs_a_bounded_rate() -> None:
    pacer = Pacer(per_second=4.0)
    waits = [pacer.reserve(100.0) for _ in range(1000)]  # 1,000 tasks due at the same moment
    assert waits[0] == 0 and waits[1] == 0.25 and waits[-1] == pytest.approx(999 / 4)
    assert pacer.reserve(100.0 + 250) == 0, "once the backlog is through, a turn is free at once"


def test_a_models_typical_duration_follows_its_recent_tasks_for_a_bounded_number_of_models() -> None:
    durations = Durations()
    durations.learn("seedance-2", 10.0)
    durations.learn("seedance-2", 20.0)
    for i in range(MAX_TYPICAL_MODELS + 10):
        durations.learn(f"model-{i}", 1.0)
    assert durations.typical("seedance-2") == pytest.approx(13.0)
    assert durations.typical(None) is None and durations.typical(f"model-{MAX_TYPICAL_MODELS + 5}") is None


async def test_a_resumed_task_is_asked_about_at_once_even_with_callbacks(
    sandbox_server: SandboxServer, held: Sandbox, time_: ManualTime
) -> None:
    """A task resumed from the ledger is a stand-in ('pending'): its end may have been pushed while no server
    listened, so the gateway is asked first thing, not after the fallback's minute."""
    async with GatewayClient(sandbox_server.url, KEY) as client:
        created = await client.generate_image(ImageRequest(model="flux-schnell", prompt="a restart"))
        await advance(sandbox_server, created.task_id)  # it ended while "the server was down"
        registry = TaskRegistry(client, await local_ledger(1000), callbacks=True, sleep=time_.sleep, clock=time_.clock)
        async with registry.running():
            stand_in = Task(task_id=created.task_id, status="pending")
            tracked = await registry.track(stand_in, "image", None, confirmed=False)
            assert not registry.is_fresh(tracked, waiting=True), "a waiting poll must ask too"
            await wait_until(lambda: tracked.task.is_terminal)
    assert held.requests[TASK_GETS] == 1 and time_.naps == [], "asked once, at once"


async def test_a_models_typical_duration_lies_between_its_last_unfinished_sighting_and_its_noticed_end(
    sandbox_server: SandboxServer, time_: ManualTime
) -> None:
    """Not the noticed end alone: that is late by the poll's aim, and aiming at it would creep later."""
    async with GatewayClient(sandbox_server.url, KEY) as client:
        registry = TaskRegistry(client, await local_ledger(1000), sleep=time_.sleep, clock=time_.clock)
        async with registry.running():
            await registry.track(Task(task_id="task_m", status="pending", model="m"), "image", None)
            time_.now += 2
            await registry.update(Task(task_id="task_m", status="running", progress=0.5, model="m"))
            time_.now += 3  # the end is noticed 3 s after the last sighting
            await registry.update(Task(task_id="task_m", status="succeeded", model="m"))
            await wait_until(lambda: time_.sleeping == 0)
    assert registry.durations.typical("m") == 3.5  # seen running at 2 s, its end noticed at 5 s
