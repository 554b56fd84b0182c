"""Saving results to --output-dir: bounded in time and size, whatever the result host does."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apikey_mcp.downloads import file_name
from apikey_mcp.gateway.models import TaskOutput
from apikey_mcp.sandbox import Sandbox, SandboxServer, assets
from tests.conftest import wait_until
from tests.server.conftest import call, connect, poll_until_saved, settings_for


async def test_a_slow_drip_result_host_cannot_hold_poll_task(
    sandbox_server: SandboxServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.faults.file_drip = 0.2  # one byte every 0.2 s, for ever
    settings = settings_for(sandbox_server, output_dir=tmp_path, download_deadline_seconds=3)
    async with connect("memory", settings) as client:
        created = await call(client, "generate_image", prompt="slow host", model="flux-schnell")
        task_id = created["task_id"]
        last: dict[str, Any] = {}

        async def polled(until: Callable[[dict[str, Any]], bool]) -> bool:
            last.update(await call(client, "poll_task", task_id=task_id, wait_seconds=0))
            return until(last)

        await wait_until(lambda: polled(lambda r: r["status"] == "succeeded"))  # the first look starts the save
        started = time.monotonic()
        pending = await call(client, "poll_task", task_id=task_id, wait_seconds=1)
        took = time.monotonic() - started
        await wait_until(lambda: polled(lambda r: "under way" not in r["next_step"]))  # the save's 3 s deadline
    # The bound: wait_seconds + 1 s (the server allows itself wait_seconds + SAVE_GRACE, 0.25 s).
    assert took < 1 + 1, f"poll_task(wait_seconds=1) took {took:.2f} s"
    assert pending["status"] == "succeeded" and pending["outputs"][0].get("path") is None
    assert "under way" in pending["next_step"] and pending["outputs"][0]["url"].startswith("http")
    assert "did not finish within 3 s" in last["next_step"] and last["outputs"][0].get("path") is None
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


async def test_one_tasks_files_together_are_capped(sandbox_server: SandboxServer, tmp_path: Path) -> None:
    size = len(assets.render("image", "three cats"))
    settings = settings_for(sandbox_server, output_dir=tmp_path, max_task_download_bytes=2 * size + size // 2)
    async with connect("memory", settings) as client:
        created = await call(client, "generate_image", prompt="three cats", model="flux-schnell", n=3)
        done = await poll_until_saved(client, created["task_id"])
    paths = [o.get("path") for o in done["outputs"]]
    assert (
        paths[:2]
        == [str(tmp_path / file_name(created["task_id"], i, TaskOutput(mime_type="image/png"))) for i in range(2)]
        and paths[2] is None
    )
    assert "Saved 2 of 3 files" in done["next_step"] and "cap" in done["next_step"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 2 * size


def test_task_ids_alike_in_their_first_80_safe_characters_get_different_files() -> None:
    output = TaskOutput(url="https://cdn.example/x.png", mime_type="image/png")
    first, second = "t" * 80 + "/a", "t" * 80 + "/b"
    assert file_name(first, 0, output) != file_name(second, 0, output)
    assert file_name("a/b", 0, output) != file_name("a?b", 0, output)  # both sanitise to a_b
    assert "/" not in file_name("../../etc/passwd", 0, output)
