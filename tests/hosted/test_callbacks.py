"""Signed callbacks pushed to the hosted server: only trusted ones change anything, and they wake waiters."""

from __future__ import annotations

import json
import time
import warnings

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import ResourceUpdatedNotification

from apikey_mcp.gateway import webhooks
from apikey_mcp.sandbox import Sandbox, SandboxServer
from tests.conftest import advance, wait_until
from tests.hosted.conftest import ALICE, Hosted
from tests.server.conftest import call

TASK_GETS = "GET /v1/tasks/{task_id}"


def finished(task_id: str, charged: int) -> bytes:
    return json.dumps(
        {
            "task_id": task_id,
            "id": task_id,
            "object": "gateway.image.task",
            "status": "succeeded",
            "credits": {"reserved": 0, "charged": charged},
            "outputs": [{"url": f"https://cdn.example/{task_id}.png", "mime_type": "image/png"}],
        }
    ).encode()


@pytest.fixture
def slow(hosted_factory, sandbox: Sandbox) -> Hosted:
    """Tasks held until the test moves them and a server that polls once a minute: only a callback ends them."""
    sandbox.hold = True
    return hosted_factory(poll_interval=60, max_poll_interval=60)


async def post(hosted: Hosted, body: bytes, headers: dict[str, str]) -> int:
    async with httpx2.AsyncClient() as http:
        return (await http.post(f"{hosted.url}/webhooks/api-key", content=body, headers=headers)).status_code


async def test_forged_tampered_stale_and_replayed_callbacks_change_nothing(slow: Hosted, sandbox: Sandbox) -> None:
    secret = sandbox.webhook_secret
    async with slow.connect("streamable-http", ALICE) as client:
        created = await call(client, "generate_image", prompt="pending", model="flux-schnell")
        task_id = created["task_id"]
        body = finished(task_id, 2)
        good = webhooks.signed_headers(secret, webhooks.EVENT_COMPLETED, task_id, body)
        attempts = {
            "forged": (body, webhooks.signed_headers("whsec_attacker", webhooks.EVENT_COMPLETED, task_id, body)),
            "tampered": (finished(task_id, 0), good),
            "stale": (
                body,
                webhooks.signed_headers(secret, webhooks.EVENT_COMPLETED, task_id, body, now=time.time() - 301),
            ),
            "unsigned": (body, {"content-type": "application/json"}),
        }
        statuses = {name: await post(slow, b, h) for name, (b, h) in attempts.items()}
        before = await call(client, "budget_status")
        task = await call(client, "poll_task", task_id=task_id, wait_seconds=0)

        assert await post(slow, body, good) == 204  # the genuine one is taken
        replayed = await post(slow, body, good)
        after = await call(client, "budget_status")

    assert statuses == {"forged": 401, "tampered": 401, "stale": 401, "unsigned": 401}
    assert replayed == 409
    assert before["reserved"] == 2 and before["spent"] == 0 and task["status"] == "pending"
    assert (after["reserved"], after["spent"]) == (0, 2)


async def test_a_valid_callback_completes_a_waiting_poll_without_polling_the_gateway(
    slow: Hosted, sandbox: Sandbox
) -> None:
    async with slow.connect("streamable-http", ALICE) as client:
        created = await call(client, "generate_image", prompt="pushed", model="flux-schnell")
        task_id = created["task_id"]
        result: dict = {}
        waiting = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            waiting.set()  # poll_task reports the state it starts from, then waits

        async def wait() -> None:
            answer = await client.call_tool(
                "poll_task", {"task_id": task_id, "wait_seconds": 20}, progress_callback=on_progress
            )
            result.update(answer.structured_content or {})

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            with anyio.fail_after(5):
                await waiting.wait()
            gets = sandbox.requests[TASK_GETS]
            body = finished(task_id, 2)
            headers = webhooks.signed_headers(sandbox.webhook_secret, webhooks.EVENT_COMPLETED, task_id, body)
            assert await post(slow, body, headers) == 204
    assert result["status"] == "succeeded" and result["credits_charged"] == 2
    assert result["budget"]["spent"] == 2 and result["budget"]["reserved"] == 0
    assert gets == 0, "the create's answer was fresh: poll_task waited on it without asking the gateway"
    assert sandbox.requests[TASK_GETS] == gets, "the callback, not another poll, finished it"


@pytest.mark.parametrize("era", ["2026-07-28", "legacy"])
async def test_a_subscribed_client_hears_resources_updated(slow: Hosted, sandbox: Sandbox, era: str) -> None:
    heard: list[str] = []

    async def on_message(message) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            heard.append(str(message.params.uri))

    async with slow.connect("streamable-http", ALICE) as client:
        task_id = (await call(client, "generate_image", prompt="watched", model="flux-schnell"))["task_id"]
    uri = f"apikey://tasks/{task_id}"
    body = finished(task_id, 2)
    headers = webhooks.signed_headers(sandbox.webhook_secret, webhooks.EVENT_COMPLETED, task_id, body)

    if era == "legacy":
        async with slow.connect("streamable-http", ALICE, mode="legacy", message_handler=on_message) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.subscribe_resource(uri)
            await wait_until(lambda: slow.streams.opened >= 1)  # where the server's notification will travel
            assert await post(slow, body, headers) == 204
            await wait_until(lambda: bool(heard))
    else:
        async with slow.connect("streamable-http", ALICE) as client:
            async with client.listen(resource_subscriptions=[uri]) as subscription:
                assert await post(slow, body, headers) == 204
                with anyio.fail_after(20):
                    async for event in subscription:
                        heard.append(event.uri)
                        break
    assert heard == [uri]


async def test_with_callbacks_a_waiting_poll_asks_nothing_and_the_watcher_stops_at_the_push(
    hosted_factory, sandbox_server: SandboxServer, held: Sandbox
) -> None:
    naps: list[float] = []
    parked = [0]
    now = [1000.0]

    async def park(seconds: float) -> None:
        """The watchers' sleep, in the server's thread: it never ends by itself, only when woken. It notes when
        (on the test's clock, after the create) the watcher meant to poll next."""
        naps.append(now[0] - 1000.0 + seconds)
        parked[0] += 1
        try:
            await anyio.sleep_forever()
        finally:
            parked[0] -= 1

    hosted = hosted_factory(poll_sleep=park, poll_clock=lambda: now[0], poll_interval=1.0, max_poll_interval=5.0)
    async with hosted.connect("streamable-http", ALICE) as client:
        task_id = (await call(client, "generate_image", prompt="pushed", model="flux-schnell"))["task_id"]
        now[0] += 30  # the create's answer is old now, but a waiting poll needs no GET: the end will be pushed
        waiting = anyio.Event()
        result: dict = {}

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            waiting.set()

        async def wait() -> None:
            answer = await client.call_tool(
                "poll_task", {"task_id": task_id, "wait_seconds": 30}, progress_callback=on_progress
            )
            result.update(answer.structured_content or {})

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            with anyio.fail_after(10):
                await waiting.wait()
            await wait_until(lambda: len(naps) >= 1)  # the watcher has planned its first poll
            await advance(sandbox_server, task_id)  # the sandbox ends it and pushes the signed callback
        await wait_until(lambda: parked[0] == 0)

    assert result["status"] == "succeeded" and result["budget"]["reserved"] == 0
    assert held.requests[TASK_GETS] == 0 and held.callbacks_sent[0]["status"] == 204
    assert len(naps) == 1, "one nap after the create: with callbacks, a waiter changes no plan"
    assert all(54 <= nap <= 66 for nap in naps), "with callbacks, polling is only a slow fallback"


async def test_only_a_reservation_reference_we_made_can_recover_a_lost_create(
    slow: Hosted, sandbox: Sandbox, sandbox_server: SandboxServer
) -> None:
    """A callback's signature covers its body, not our URL: the `r` reference must carry our own MAC, or a
    signed callback for some other task could claim (and settle) another principal's open reservation."""
    store = slow.accounts.store
    sandbox.faults.lost_creates.append(504)  # the task is made at the gateway; its answer never reaches us
    async with slow.connect("streamable-http", ALICE) as client:
        lost = await client.call_tool("generate_image", {"prompt": "lost", "model": "flux-schnell"})
    assert lost.is_error
    (held,) = await store.reservations(open_only=True)
    (task_id,) = sandbox.tasks
    assert held.task_id is None
    other = finished("task_someone_elses", 2)
    headers = webhooks.signed_headers(sandbox.webhook_secret, webhooks.EVENT_COMPLETED, "task_someone_elses", other)
    base = f"{slow.url}/webhooks/api-key?r={held.id}"
    async with httpx2.AsyncClient() as http:
        bare = await http.post(base, content=other, headers=headers)
        headers = webhooks.signed_headers(
            sandbox.webhook_secret, webhooks.EVENT_COMPLETED, "task_someone_elses", other, now=time.time() + 1
        )  # fmt: skip (a fresh signature)
        wrong = await http.post(f"{base}&m={'0' * 32}", content=other, headers=headers)
    assert (bare.status_code, wrong.status_code) == (404, 404)
    untouched = await store.reservation(held.id)
    assert untouched is not None and (untouched.state, untouched.task_id) == ("reserved", None)

    await advance(sandbox_server, task_id)

    async def recovered() -> bool:
        found = await store.reservation(held.id)
        return found is not None and found.state == "settled"

    await wait_until(recovered)  # the gateway's own callback, to the URL we gave it (with our MAC)
    settled = await store.reservation(held.id)
    assert settled is not None and (settled.task_id, settled.charged) == (task_id, 2)
