"""GatewayClient against the sandbox gateway running as a real HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import wave
from io import BytesIO

import pytest

from apikey_mcp.gateway import (
    AuthenticationError,
    GatewayClient,
    GatewayError,
    InsufficientCreditsError,
    InvalidRequestError,
    MaxCreditsExceededError,
    MissingApiKeyError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from apikey_mcp.gateway.models import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EstimateRequest,
    ImageRequest,
    MusicRequest,
    Task,
    TaskStatus,
    VideoRequest,
)
from apikey_mcp.sandbox import FAIL_MARKER, Sandbox, SandboxServer
from tests.conftest import KEY, advance, wait_until


class RecordingSleep:
    """Stands in for anyio.sleep so retry tests never wait on real time, and records each wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def client(sandbox_server: SandboxServer, sleeps: RecordingSleep):
    async with GatewayClient(sandbox_server.url, KEY, sleep=sleeps) as client:
        yield client


async def wait_terminal(client: GatewayClient, task_id: str) -> Task:
    seen: list[Task] = []

    async def ended() -> bool:
        seen.append(await client.get_task(task_id))
        return seen[-1].is_terminal

    await wait_until(ended)
    return seen[-1]


def video(**overrides) -> VideoRequest:
    return VideoRequest.model_validate({"model": "seedance-2-fast", "prompt": "a red fox at dawn", **overrides})


async def test_list_models_covers_every_modality(client: GatewayClient) -> None:
    models = await client.list_models()
    ids = {m.id for m in models.data}
    assert {"seedance-2", "seedance-2-fast"} <= ids
    assert {m.modality for m in models.data} == {"chat", "embedding", "image", "video", "music"}
    fast = next(m for m in models.data if m.id == "seedance-2-fast")
    assert fast.parameters.durations and fast.parameters.resolutions and fast.parameters.input_modes


async def test_estimate_matches_the_docs_example_and_charges_nothing(client: GatewayClient, sandbox: Sandbox) -> None:
    request = EstimateRequest(
        model="seedance-2-fast",
        modality="video",
        duration=6,
        resolution="720p",
        input_mode="text-to-video",
        max_credits=250,
    )
    estimate = await client.estimate(request)
    assert estimate.credits == 48
    assert estimate.within_budget is True
    assert (await client.estimate(request.model_copy(update={"max_credits": 10}))).within_budget is False
    assert sandbox.wallets[KEY].balance == 10_000


@pytest.mark.parametrize(
    ("create", "request_", "mime", "magic"),
    [
        ("generate_image", ImageRequest(model="seedream-4", prompt="a lighthouse", n=2), "image/png", b"\x89PNG"),
        ("generate_video", video(duration=5, resolution="480p"), "video/mp4", b"ftyp"),
        ("generate_music", MusicRequest(model="music-1", prompt="lofi beat", duration=10), "audio/wav", b"RIFF"),
    ],
)
async def test_task_runs_to_success_settles_and_serves_a_real_file(
    client: GatewayClient,
    sandbox_server: SandboxServer,
    held: Sandbox,
    create: str,
    request_,
    mime: str,
    magic: bytes,
    tmp_path,
) -> None:
    sandbox = held
    task = await getattr(client, create)(request_)
    assert task.status is TaskStatus.PENDING and task.task_id == task.id and task.object.startswith("gateway.")
    reserved = sandbox.wallets[KEY].reserved
    assert reserved > 0

    await advance(sandbox_server, task.task_id)
    done = await wait_terminal(client, task.task_id)

    assert done.status is TaskStatus.SUCCEEDED
    assert done.credits.charged == reserved
    assert sandbox.wallets[KEY].balance == 10_000 - reserved and sandbox.wallets[KEY].reserved == 0
    assert len(done.outputs) == getattr(request_, "n", 1)
    output = done.outputs[0]
    assert output.mime_type == mime
    dest = tmp_path / f"result.{mime.split('/')[1]}"
    size = await client.download(output.url, dest, max_bytes=1_000_000)
    data = dest.read_bytes()
    assert size == len(data) > 0 and magic in data[:12]
    if mime == "audio/wav":
        with wave.open(BytesIO(data)) as w:
            assert w.getnframes() > 0


async def test_download_over_the_size_cap_writes_nothing(client: GatewayClient, tmp_path) -> None:
    task = await client.generate_video(video())
    done = await wait_terminal(client, task.task_id)
    dest = tmp_path / "clip.mp4"
    with pytest.raises(GatewayError, match="cap"):
        await client.download(done.outputs[0].url, dest, max_bytes=100)
    assert list(tmp_path.iterdir()) == []


async def test_chat_completion_is_openai_shaped_with_usage(client: GatewayClient) -> None:
    request = ChatRequest(model="gpt-4o-mini", messages=[ChatMessage(role="user", content="hello there")])
    completion = await client.chat_completion(request)
    assert completion.choices[0].message.role == "assistant"
    assert "hello there" in completion.choices[0].message.content
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


async def test_embeddings_are_stable_unit_vectors(client: GatewayClient) -> None:
    first = await client.create_embeddings(EmbeddingRequest(model="embed-small", input=["cat", "dog"]))
    again = await client.create_embeddings(EmbeddingRequest(model="embed-small", input="cat"))
    assert [e.index for e in first.data] == [0, 1]
    assert first.data[0].embedding == again.data[0].embedding != first.data[1].embedding
    assert abs(sum(v * v for v in first.data[0].embedding) - 1) < 1e-3
    assert first.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("llms.txt", "text/plain"),
        ("auth.md", "text/markdown"),
        ("index.md", "text/markdown"),
        ("api-catalog", "application/linkset+json"),
        ("openapi.json", "application/json"),
    ],
)
async def test_documents_come_as_text_with_their_content_type(client: GatewayClient, name: str, content_type: str):
    document = await client.get_document(name)
    assert document.content_type == content_type
    assert "sandbox" in document.text.lower()
    if name == "openapi.json":
        spec = json.loads(document.text)
        assert {"/v1/videos", "/v1/tasks/{task_id}", "/v1/credits/estimate"} <= set(spec["paths"])
        assert "max_credits" in spec["components"]["schemas"]["VideoRequest"]["properties"]


async def test_wrong_key_is_an_authentication_error(sandbox_server: SandboxServer) -> None:
    async with GatewayClient(sandbox_server.url, "sk-wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.generate_video(video())
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert "APIKEY_API_KEY" in str(caught.value)


async def test_missing_key_fails_before_any_request(sandbox_server: SandboxServer, sandbox: Sandbox) -> None:
    async with GatewayClient(sandbox_server.url, None) as client:
        assert (await client.list_models()).data  # public endpoints still answer
        with pytest.raises(MissingApiKeyError, match="APIKEY_API_KEY"):
            await client.generate_video(video())
    assert "POST /v1/videos" not in sandbox.requests


async def test_x_api_key_header_is_accepted(sandbox_server: SandboxServer) -> None:
    async with GatewayClient(sandbox_server.url, KEY, auth_scheme="x-api-key") as client:
        task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="a cat"))
        assert (await client.get_task(task.task_id)).task_id == task.task_id


async def test_max_credits_below_estimate_is_refused_and_no_task_exists(client: GatewayClient, sandbox: Sandbox):
    with pytest.raises(MaxCreditsExceededError) as caught:
        await client.generate_video(video(duration=10, max_credits=20))
    assert caught.value.estimate == 80 and caught.value.status == 402
    assert sandbox.tasks == {}
    assert (sandbox.wallets[KEY].balance, sandbox.wallets[KEY].reserved) == (10_000, 0)


async def test_wallet_too_small_is_insufficient_credits() -> None:
    with SandboxServer(Sandbox([KEY], credits=30)) as server:
        async with GatewayClient(server.url, KEY) as client:
            with pytest.raises(InsufficientCreditsError) as caught:
                await client.generate_video(video())
        assert caught.value.code == "insufficient_credits" and server.sandbox.tasks == {}


async def test_failed_task_is_refunded(client: GatewayClient, sandbox_server: SandboxServer, held: Sandbox) -> None:
    sandbox = held
    task = await client.generate_video(video(prompt=f"a storm {FAIL_MARKER}"))
    assert sandbox.wallets[KEY].reserved > 0
    await advance(sandbox_server, task.task_id, "failed")
    done = await wait_terminal(client, task.task_id)
    assert done.status is TaskStatus.FAILED and done.error.code == "upstream_error"
    assert done.credits.charged == 0 and done.credits.refunded > 0
    assert (sandbox.wallets[KEY].balance, sandbox.wallets[KEY].reserved) == (10_000, 0)


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ({"model": "seedance-2", "prompt": ""}, InvalidRequestError, "prompt"),
        ({"model": "seedance-2", "prompt": "x", "duration": 7}, InvalidRequestError, "duration"),
        ({"model": "seedance-2-fast", "prompt": "x", "resolution": "1080p"}, InvalidRequestError, "resolution"),
        ({"model": "seedance-2", "prompt": "x", "input_mode": "image-to-video"}, InvalidRequestError, "image_url"),
        ({"model": "no-such-model", "prompt": "x"}, NotFoundError, "model"),
    ],
)
async def test_bad_create_names_the_field(client: GatewayClient, sandbox: Sandbox, body, error, param) -> None:
    # model_construct skips our own validation, so the sandbox's is what is tested.
    with pytest.raises(error) as caught:
        await client.generate_video(VideoRequest.model_construct(**body))
    assert caught.value.param == param
    assert sandbox.tasks == {}


async def test_unknown_task_is_not_found(client: GatewayClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.get_task("task_does_not_exist")
    assert caught.value.code == "task_not_found"


async def test_a_task_of_another_key_is_not_found(sandbox_server: SandboxServer, client: GatewayClient) -> None:
    from tests.conftest import OTHER_KEY

    task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="mine"))
    async with GatewayClient(sandbox_server.url, OTHER_KEY) as other:
        with pytest.raises(NotFoundError):
            await other.get_task(task.task_id)


# ---------------------------------------------------------------- retries


async def test_get_is_retried_on_503_with_backoff(client: GatewayClient, sandbox: Sandbox, sleeps) -> None:
    sandbox.faults.scripted.extend([(503, None), (503, None)])
    assert (await client.list_models()).data
    assert sandbox.requests["GET /v1/models"] == 3
    assert len(sleeps.waits) == 2 and 0.375 <= sleeps.waits[0] <= 0.5 and 0.75 <= sleeps.waits[1] <= 1.0


async def test_get_honours_retry_after_on_429(client: GatewayClient, sandbox: Sandbox, sleeps) -> None:
    task = await client.generate_image(ImageRequest(model="flux-schnell", prompt="x"))
    sandbox.faults.scripted.append((429, 1.5))
    assert (await client.get_task(task.task_id)).task_id == task.task_id
    assert sandbox.requests["GET /v1/tasks/{task_id}"] == 2
    assert sleeps.waits == [1.5]


async def test_create_is_not_retried_on_500(client: GatewayClient, sandbox: Sandbox, sleeps) -> None:
    sandbox.faults.scripted.append((500, None))
    with pytest.raises(ServerError) as caught:
        await client.generate_video(video())
    assert caught.value.status == 500
    assert sandbox.requests["POST /v1/videos"] == 1 and sleeps.waits == []


async def test_create_is_not_retried_on_429_and_says_when_to_retry(client: GatewayClient, sandbox: Sandbox) -> None:
    sandbox.faults.scripted.append((429, 2))
    with pytest.raises(RateLimitedError) as caught:
        await client.generate_video(video())
    assert caught.value.retry_after == 2 and "2 s" in str(caught.value)
    assert sandbox.requests["POST /v1/videos"] == 1


async def test_retries_are_bounded(client: GatewayClient, sandbox: Sandbox, sleeps) -> None:
    sandbox.faults.scripted.extend([(503, None)] * 10)
    with pytest.raises(ServerError):
        await client.list_models()
    assert sandbox.requests["GET /v1/models"] == 1 + client.max_retries


async def test_retry_after_beyond_a_minute_is_not_waited_out(client: GatewayClient, sandbox: Sandbox, sleeps) -> None:
    sandbox.faults.scripted.append((429, 3600))
    with pytest.raises(RateLimitedError) as caught:
        await client.list_models()
    assert caught.value.retry_after == 3600 and sleeps.waits == []


# ---------------------------------------------------------------- secrecy


async def test_key_never_appears_in_logs_reprs_or_errors(sandbox_server: SandboxServer, sandbox: Sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    sandbox.faults.scripted.extend([(503, None), (429, 0)])
    async with GatewayClient(sandbox_server.url, KEY, sleep=RecordingSleep()) as client:
        texts += [repr(client), repr(client._http.auth)]
        await client.list_models()
        task = await client.generate_video(video())
        await wait_terminal(client, task.task_id)
        failures = [
            client.generate_video(video(max_credits=1)),
            client.get_task("task_missing"),
            client.generate_video(VideoRequest.model_construct(model="x", prompt="")),
        ]
        for failure in failures:
            with pytest.raises(GatewayError) as caught:
                await failure
            texts += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    async with GatewayClient(sandbox_server.url, KEY + "-wrong") as wrong:
        with pytest.raises(AuthenticationError) as caught:
            await wrong.generate_video(video())
        texts.append(str(caught.value))
    texts.append(caplog.text)
    assert any(r.name.startswith("apikey_mcp.gateway") for r in caplog.records)  # the client itself logged
    assert all(KEY not in text for text in texts)


async def test_a_create_without_a_key_is_401_before_its_body_is_judged(sandbox_server: SandboxServer) -> None:
    async with GatewayClient(sandbox_server.url, "sk-nobody") as client:
        with pytest.raises(AuthenticationError):
            await client.generate_video(VideoRequest.model_construct(model="", prompt=""))
