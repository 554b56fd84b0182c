"""Bounded memory: finished tasks leave memory after their retention, subscriptions only to one's own tasks,
dropped with their session."""

from __future__ import annotations

import gc
import warnings

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from tests.conftest import wait_until
from tests.hosted.conftest import ALICE, BOB, Hosted
from tests.server.conftest import call, call_error


async def test_a_finished_task_leaves_memory_but_its_owner_can_still_poll_it(hosted_factory) -> None:
    hosted: Hosted = hosted_factory(task_retention_seconds=0)
    async with hosted.connect("streamable-http", ALICE) as alice, hosted.connect("streamable-http", BOB) as bob:
        first = (await call(alice, "generate_image", prompt="one", model="flux-schnell"))["task_id"]
        await call(alice, "poll_task", task_id=first, wait_seconds=10)
        await call(alice, "generate_image", prompt="two", model="flux-schnell")  # tracking it lets the first go
        in_memory = hosted.accounts.owns("alice", first)
        again = await call(alice, "poll_task", task_id=first, wait_seconds=0)
        refused = await call_error(bob, "poll_task", task_id=first, wait_seconds=0)
        budget = await call(alice, "budget_status")
    assert not in_memory
    assert again["status"] == "succeeded" and again["task_id"] == first
    assert "task_not_found" in refused
    assert budget["spent"] + budget["reserved"] == 4  # two tasks of 2 credits: the one let go of is not charged again


async def _subscribe(client: Client, uri: str) -> None:
    """resources/subscribe, as 2025-era clients send it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(uri)


async def test_only_ones_own_tasks_can_be_subscribed_and_nothing_else_is_kept(hosted: Hosted) -> None:
    async with (
        hosted.connect("streamable-http", ALICE) as alice,
        hosted.connect("streamable-http", BOB, mode="legacy") as bob,
    ):
        task_id = (await call(alice, "generate_image", prompt="alice's", model="flux-schnell"))["task_id"]
        for uri in (f"apikey://tasks/{task_id}", "apikey://tasks/" + "x" * 4096, "apikey://budget"):
            with pytest.raises(MCPError, match="Only your own tasks"):
                await _subscribe(bob, uri)
    assert hosted.updates.subscriptions() == 0


async def test_a_subscription_goes_with_its_session(slow_hosted: Hosted) -> None:
    async with slow_hosted.connect("streamable-http", ALICE, mode="legacy") as alice:
        task_id = (await call(alice, "generate_image", prompt="watched", model="flux-schnell"))["task_id"]
        await _subscribe(alice, f"apikey://tasks/{task_id}")
        held = slow_hosted.updates.subscriptions()

    def dropped() -> bool:
        gc.collect()  # a closed connection may sit in a reference cycle until the collector runs
        return slow_hosted.updates.subscriptions() == 0

    await wait_until(dropped)
    assert held == 1


@pytest.fixture
def slow_hosted(hosted_factory, sandbox) -> Hosted:  # type: ignore[no-untyped-def]
    sandbox.hold = True  # the task stays pending while the test runs
    return hosted_factory()
