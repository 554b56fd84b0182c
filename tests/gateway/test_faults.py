"""Faults a real server cannot easily produce, through httpx2.MockTransport."""

from __future__ import annotations

import httpx2
import pytest

from apikey_mcp.gateway import (
    GatewayClient,
    GatewayConnectionError,
    GatewayProtocolError,
    GatewayTimeoutError,
    ServerError,
)
from apikey_mcp.gateway.errors import parse_retry_after
from apikey_mcp.gateway.models import ModelList, Task, TaskStatus, VideoRequest

VIDEO = VideoRequest(model="seedance-2", prompt="x")
TASK = {"task_id": "task_1", "id": "task_1", "object": "gateway.video.task", "status": "pending"}


class Script:
    """A transport that answers from a list: an httpx2 exception is raised, anything else is the response."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def no_sleep(seconds: float) -> None:
    pass


def client_for(script: Script) -> GatewayClient:
    return GatewayClient("https://gateway.test", "sk-mock-key", transport=httpx2.MockTransport(script), sleep=no_sleep)


async def test_create_is_retried_when_the_connection_never_opened() -> None:
    script = Script(httpx2.ConnectError("refused"), httpx2.Response(200, json=TASK))
    async with client_for(script) as client:
        assert (await client.generate_video(VIDEO)).task_id == "task_1"
    assert len(script.requests) == 2


async def test_create_that_timed_out_is_not_retried() -> None:
    script = Script(httpx2.ReadTimeout("slow"), httpx2.Response(200, json=TASK))
    async with client_for(script) as client:
        with pytest.raises(GatewayTimeoutError, match="timed out"):
            await client.generate_video(VIDEO)
    assert len(script.requests) == 1


async def test_create_whose_connection_broke_mid_answer_is_not_retried() -> None:
    script = Script(httpx2.RemoteProtocolError("peer closed"), httpx2.Response(200, json=TASK))
    async with client_for(script) as client:
        with pytest.raises(GatewayConnectionError):
            await client.generate_video(VIDEO)
    assert len(script.requests) == 1


async def test_get_is_retried_after_a_read_timeout() -> None:
    script = Script(httpx2.ReadTimeout("slow"), httpx2.Response(200, json=TASK))
    async with client_for(script) as client:
        assert (await client.get_task("task_1")).status is TaskStatus.PENDING
    assert len(script.requests) == 2


async def test_an_answer_that_is_not_the_contract_is_a_protocol_error() -> None:
    script = Script(httpx2.Response(200, text="<html>maintenance</html>"))
    async with client_for(script) as client:
        with pytest.raises(GatewayProtocolError, match="maintenance"):
            await client.generate_video(VIDEO)


async def test_an_error_without_the_envelope_keeps_its_text() -> None:
    script = Script(httpx2.Response(502, text="Bad gateway from the edge"))
    async with client_for(script) as client:
        client.max_retries = 0
        with pytest.raises(ServerError, match="Bad gateway from the edge") as caught:
            await client.get_task("task_1")
    assert caught.value.status == 502


async def test_task_ids_cannot_escape_their_path_segment() -> None:
    script = Script(httpx2.Response(200, json=TASK))
    async with client_for(script) as client:
        await client.get_task("../v1/models?x=1")
    assert script.requests[0].url.raw_path == b"/v1/tasks/..%2Fv1%2Fmodels%3Fx%3D1"


async def test_the_key_goes_only_to_the_gateway_origin(tmp_path) -> None:
    script = Script(httpx2.Response(200, json=TASK), httpx2.Response(200, content=b"data"))
    async with client_for(script) as client:
        await client.get_task("task_1")
        await client.download("https://cdn.example.test/out.png", tmp_path / "out.png", max_bytes=10)
    assert script.requests[0].headers["authorization"] == "Bearer sk-mock-key"
    assert "authorization" not in script.requests[1].headers


def test_unknown_fields_status_synonyms_and_fractional_credits_are_tolerated() -> None:
    task = Task.model_validate(
        {"task_id": "t", "status": "completed", "credits": {"charged": 12.2}, "shiny_new_field": [1]}
    )
    assert task.status is TaskStatus.SUCCEEDED and task.is_terminal
    assert task.credits.charged == 13
    assert task.model_extra == {"shiny_new_field": [1]}
    odd = Task.model_validate({"task_id": "t", "status": "Warming_Up"})
    assert odd.status == "Warming_Up" and not odd.is_terminal


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_retry_after_header_is_read_as_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("scheme", ["bearer", "x-api-key"])
async def test_an_answer_that_echoes_the_key_is_redacted(scheme: str) -> None:
    echo = "upstream said: Authorization: Bearer sk-mock-key / x-api-key: sk-mock-key"
    script = Script(httpx2.Response(502, text=echo), httpx2.Response(200, text=f"<p>{echo}</p>"))
    async with GatewayClient(
        "https://gateway.test",
        "sk-mock-key",
        auth_scheme=scheme,
        transport=httpx2.MockTransport(script),
        sleep=no_sleep,
        max_retries=0,
    ) as client:
        with pytest.raises(ServerError) as server_error:
            await client.generate_video(VIDEO)
        with pytest.raises(GatewayProtocolError) as protocol_error:
            await client.generate_video(VIDEO)
    for exc in (server_error.value, protocol_error.value):
        assert "sk-mock-key" not in str(exc) and "[redacted]" in str(exc)
    assert "sk-mock-key" not in (protocol_error.value.body or "")


@pytest.mark.parametrize("scheme", ["bearer", "x-api-key"])
async def test_downloads_follow_redirects_and_the_key_stays_home(scheme: str, tmp_path) -> None:
    script = Script(
        httpx2.Response(302, headers={"location": "/v1/files/1"}),  # same origin first
        httpx2.Response(307, headers={"location": "https://cdn.example.test/a.png"}),
        httpx2.Response(200, content=b"\x89PNG data"),
    )
    async with GatewayClient(
        "https://gateway.test",
        "sk-mock-key",
        auth_scheme=scheme,
        transport=httpx2.MockTransport(script),
        sleep=no_sleep,
    ) as client:
        size = await client.download("https://gateway.test/r/1", tmp_path / "a.png", max_bytes=100)
    assert size == 9 and (tmp_path / "a.png").read_bytes() == b"\x89PNG data"
    sent = [("authorization" in r.headers or "x-api-key" in r.headers) for r in script.requests]
    assert sent == [True, True, False]


def test_answers_the_docs_do_not_describe_are_still_read() -> None:
    task = Task.model_validate(
        {
            "task_id": "t",
            "status": "running",
            "progress": 45,
            "created_at": "2026-11-25T10:00:00Z",
            "credits": 12,
            "error": "slow upstream",
            "outputs": [{"mime_type": "image/png"}],
        }
    )
    assert task.progress == 0.45 and task.created_at == "2026-11-25T10:00:00Z"
    assert task.credits.charged == 12 and task.error.message == "slow upstream"
    models = ModelList.model_validate(
        {
            "data": [
                {"id": "v", "modality": "video", "parameters": {"input_modes": ["audio-to-video"], "durations": "5-10"}}
            ]
        }
    )
    assert models.data[0].id == "v"
