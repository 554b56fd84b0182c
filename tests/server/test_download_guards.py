"""Downloads go only to public result hosts (or the gateway's own origin) unless the operator allows private
ones, and the output directory as a whole stays within its quota."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from apikey_mcp.download_guards import DiskQuota, TargetGuard
from apikey_mcp.downloads import Downloads, Save
from apikey_mcp.gateway import GatewayClient
from apikey_mcp.gateway.models import TaskOutput
from apikey_mcp.sandbox import BackgroundServer, SandboxServer, assets
from tests.conftest import KEY
from tests.server.conftest import call, connect, poll_until_saved, settings_for


class Host:
    """A result host on loopback: `/file` is 1,000 bytes, `/hop?to=URL` redirects; it counts what it served."""

    def __init__(self) -> None:
        self.served: list[str] = []

        async def file(request: Request) -> Response:
            self.served.append(request.url.path)
            return Response(b"x" * 1000, media_type="image/png")

        async def hop(request: Request) -> Response:
            self.served.append(request.url.path)
            return RedirectResponse(request.query_params["to"], status_code=302)

        self.app = Starlette(routes=[Route("/file", file), Route("/hop", hop)])


@pytest.fixture
def hosts() -> Iterator[tuple[Host, BackgroundServer, Host, BackgroundServer]]:
    """Two result hosts on loopback: the first plays the gateway's own origin, the second some other host."""
    first, second = Host(), Host()
    with BackgroundServer(first.app) as gateway, BackgroundServer(second.app) as other:
        yield first, gateway, second, other


async def save(gateway_url: str, links: list[str], directory: Path, **guards: Any) -> Save:
    async with GatewayClient(gateway_url, KEY) as client:
        downloads = Downloads(
            client,
            directory,
            max_file_bytes=10_000,
            max_task_bytes=100_000,
            deadline=30,
            guard=TargetGuard(gateway_url, **guards),
        )
        async with anyio.create_task_group() as group:
            done = downloads.start(
                "task_1", [TaskOutput(url=u, mime_type="image/png") for u in links], group.start_soon
            )
            await done.done.wait()
    return done


async def test_private_result_hosts_are_refused_unless_allowed(hosts, tmp_path: Path) -> None:
    first, gateway, second, other = hosts
    links = [
        f"{gateway.url}/file",
        f"{other.url}/file",
        "http://169.254.169.254/latest/meta-data/",
        f"{gateway.url}/hop?to={other.url}/file",
        "http://localhost:1/x.png",
        "file:///etc/passwd",
    ]
    refused = await save(gateway.url, links, tmp_path / "strict")
    assert [p is not None for p in refused.paths] == [True, False, False, False, False, False]
    assert first.served == ["/file", "/hop"] and second.served == []  # the hop to the other host was refused
    assert sum("--allow-private-downloads" in e for e in refused.errors) == 4
    assert "169.254.169.254" in refused.errors[1] and "not an http(s) link" in refused.errors[-1]
    allowed = await save(gateway.url, links[:2] + links[3:4], tmp_path / "open", allow_private=True)
    assert all(allowed.paths) and second.served == ["/file", "/file"] and not allowed.errors


async def test_the_output_directory_stops_at_its_quota(sandbox_server: SandboxServer, tmp_path: Path) -> None:
    size = len(assets.render("image", "three cats"))
    (tmp_path / "earlier.png").write_bytes(b"y" * size)  # files already there count too
    settings = settings_for(sandbox_server, output_dir=tmp_path, max_output_dir_bytes=2 * size + size // 2)
    async with connect("memory", settings) as client:
        created = await call(client, "generate_image", prompt="three cats", model="flux-schnell", n=3)
        done = await poll_until_saved(client, created["task_id"])
    assert [o.get("path") is not None for o in done["outputs"]] == [True, False, False]
    assert "Saved 1 of 3 files" in done["next_step"] and "quota" in done["next_step"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 2 * size  # no partial file left
    assert DiskQuota.of(tmp_path, 2 * size + size // 2).used == 2 * size
