"""Confirmation above a threshold, and the operator's cap and allow-list: each refuses before anything is reserved
or created, says why and names the setting; an approval lets the call go on under the budget as always."""

from __future__ import annotations

import pytest
from mcp.server.elicitation import AcceptedElicitation
from mcp.types import ElicitResult

from apikey_mcp.confirm import ConfirmationRefusedError, SpendApproval, answered, confirm_spend
from apikey_mcp.gateway.models import EstimateRequest
from apikey_mcp.sandbox import Sandbox, SandboxServer, pricing
from apikey_mcp.stores import MemoryLedgerStore
from tests.server.conftest import answering, call, call_error, connect, settings_for

VIDEO = {"prompt": "a drone shot over hills", "model": "seedance-2-fast", "duration": 5, "resolution": "720p"}  # 40
ESTIMATES, VIDEOS = "POST /v1/credits/estimate", "POST /v1/videos"


async def test_a_call_above_confirm_above_goes_ahead_when_the_human_approves(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    elicitation, asked = answering("accept", True)
    settings = settings_for(sandbox_server, confirm_above=30)
    async with connect("memory", settings, elicitation_callback=elicitation) as client:
        started = await call(client, "generate_video", **VIDEO)
        cheap = await call(client, "generate_image", prompt="x", model="flux-schnell")  # 2 credits: not asked
    assert asked == ["Generate a 5 s 720p video with seedance-2-fast for 40 credits? 960 left"]
    assert started["credits_reserved"] == 40 and set(sandbox.tasks) == {started["task_id"], cheap["task_id"]}


@pytest.mark.parametrize(("action", "approve"), [("decline", None), ("cancel", None), ("accept", False)])
async def test_a_call_the_human_does_not_approve_reserves_and_creates_nothing(
    sandbox_server: SandboxServer, sandbox: Sandbox, action: str, approve: bool | None
) -> None:
    elicitation, asked = answering(action, approve)
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, confirm_above=30)
    async with connect("memory", settings, store=store, elicitation_callback=elicitation) as client:
        text = await call_error(client, "generate_video", **VIDEO)
        budget = await call(client, "budget_status")
    assert len(asked) == 1 and "did not approve" in text and "--confirm-above" in text and "Nothing was" in text
    assert sandbox.tasks == {} and sandbox.requests[VIDEOS] == 0
    assert budget["reserved"] == budget["spent"] == 0 and await store.reservations() == []


async def test_a_client_without_elicitation_is_refused_above_confirm_above_and_nothing_is_created(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    store = MemoryLedgerStore()
    async with connect("memory", settings_for(sandbox_server, confirm_above=30), store=store) as client:
        text = await call_error(client, "generate_video", **VIDEO)
        budget = await call(client, "budget_status")
    assert "cannot ask the human" in text and "APIKEY_CONFIRM_ABOVE" in text
    assert sandbox.tasks == {} and sandbox.requests[VIDEOS] == 0
    assert budget["reserved"] == 0 and await store.reservations() == []


@pytest.mark.slow
async def test_over_stdio_the_human_is_asked_through_the_real_client_and_a_decline_creates_nothing(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    elicitation, asked = answering("decline")
    async with connect("stdio", settings_for(sandbox_server, confirm_above=30), elicitation_callback=elicitation) as c:
        text = await call_error(c, "generate_video", **VIDEO)
    assert asked and "for 40 credits? 960 left" in asked[0] and "did not approve" in text and sandbox.tasks == {}


async def test_a_model_outside_the_allow_list_is_refused_before_any_estimate(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    async with connect("memory", settings_for(sandbox_server, allow="image,gpt-4o-mini")) as client:
        video = await call_error(client, "generate_video", **VIDEO)
        chat = await call(client, "chat_completion", model="gpt-4o-mini", prompt="hi")  # allowed by its id
        image = await call(client, "generate_image", prompt="x", model="flux-schnell")  # allowed by its modality
        status = await call(client, "budget_status")
    assert "allows only gpt-4o-mini, image" in video and "--allow" in video and "seedance-2-fast" in video
    assert sandbox.requests[VIDEOS] == 0
    assert sandbox.requests[ESTIMATES] == 2  # the chat's and the image's: the video was never priced
    assert chat["content"] and image["task_id"] in sandbox.tasks
    assert status["policy"] == {"allow": ["gpt-4o-mini", "image"]}


async def test_a_call_above_the_cap_is_refused_after_its_estimate_and_before_anything_is_reserved_or_asked(
    sandbox_server: SandboxServer, sandbox: Sandbox
) -> None:
    elicitation, asked = answering("accept", True)
    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, max_per_call=30, confirm_above=10)
    async with connect("memory", settings, store=store, elicitation_callback=elicitation) as client:
        text = await call_error(client, "generate_video", **VIDEO)
        status = await call(client, "budget_status")
    assert "estimated at 40 credits" in text and "at most 30 per call" in text and "--max-per-call" in text
    assert "whoever runs this server" in text  # over stdio; hosted, it names admin set-policy
    assert sandbox.requests[ESTIMATES] == 1 and sandbox.requests[VIDEOS] == 0 and asked == []
    assert await store.reservations() == [] and status["policy"] == {"max_per_call": 30, "allow": []}


async def test_a_price_that_rises_after_the_approval_is_asked_again_and_a_decline_creates_nothing(
    sandbox_server: SandboxServer, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The human approved 40 credits; the price rose before the call: the human is asked again at the new price."""
    asked: list[str] = []

    async def approve_once_then_the_price_rises(context, params) -> ElicitResult:
        asked.append(params.message)
        monkeypatch.setitem(pricing.VIDEO_PER_SECOND, "seedance-2-fast", 16)  # 5 s: 40 credits become 80
        return ElicitResult(action="accept", content={"approve": len(asked) == 1})

    store = MemoryLedgerStore()
    settings = settings_for(sandbox_server, confirm_above=30)
    callback = approve_once_then_the_price_rises
    async with connect("memory", settings, store=store, elicitation_callback=callback) as client:
        text = await call_error(client, "generate_video", **VIDEO)
    assert asked == [
        "Generate a 5 s 720p video with seedance-2-fast for 40 credits? 960 left",
        "Generate a 5 s 720p video with seedance-2-fast for 80 credits? 920 left",
    ]
    assert "did not approve" in text and "Nothing was" in text
    assert sandbox.tasks == {} and sandbox.requests[VIDEOS] == 0 and await store.reservations() == []


def test_an_approval_holds_only_up_to_the_price_the_human_was_asked() -> None:
    """The last window: an estimate dearer than the question's price, after the approval, is refused."""
    plan = EstimateRequest(model="seedance-2-fast", modality="video", duration=5)
    approval = AcceptedElicitation(data=SpendApproval(approve=True))
    with answered(approval):
        confirm_spend(30, plan, 40, asked=40)  # the price asked: it goes on
        with pytest.raises(ConfirmationRefusedError, match="now costs 80 credits, more than the 40 the human approved"):
            confirm_spend(30, plan, 80, asked=40)
