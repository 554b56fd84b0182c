"""deploy/scale-out.sh, as the README's Scaling out section has it typed: start two replicas and nginx on one
PostgreSQL ledger (with the sandbox gateway, so no account), make MCP calls through the balancer, stop it all."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import free_port
from tests.ledger.conftest import postgres_schema
from tests.provision import program
from tests.server.conftest import call

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alice-scale-out-token-0123456789"


@pytest.mark.slow
async def test_the_scale_out_script_starts_replicas_behind_nginx_and_stops_them(tmp_path: Path) -> None:
    nginx = program("nginx")
    listen, replicas = f"127.0.0.1:{free_port()}", [free_port(), free_port()]
    with postgres_schema() as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")} | {
            "APIKEY_DATABASE_URL": database_url,
            "APIKEY_MCP_AUTH_TOKENS": f"alice={TOKEN}",
            "SANDBOX": "1",
            "RUN_DIR": str(tmp_path / "run"),
            "LISTEN": listen,
            "REPLICA_PORTS": " ".join(map(str, replicas)),
            "SANDBOX_PORT": str(free_port()),
            "APIKEY_MCP": str(Path(sys.executable).parent / "apikey-mcp"),
            "PYTHON": sys.executable,
            "NGINX_BIN": nginx,
            "XDG_DATA_HOME": str(tmp_path / "data"),
        }
        script = str(ROOT / "deploy" / "scale-out.sh")
        try:
            with anyio.fail_after(240):  # the script waits at most 60 s for each process it starts
                started = await anyio.run_process([script, "start"], env=env, check=False)
            assert started.returncode == 0, started.stderr.decode() + started.stdout.decode()
            assert f"behind http://{listen}/mcp" in started.stdout.decode()
            pids = [int(p.read_text()) for p in (tmp_path / "run").glob("*.pid")]
            assert len(pids) == 3  # two replicas and the sandbox gateway
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
                async with Client(streamable_http_client(f"http://{listen}/mcp", http_client=http)) as client:
                    created = await call(client, "generate_image", prompt="through nginx", model="flux-schnell")
                    budget = await call(client, "budget_status")
            assert created["task_id"] and budget["reserved"] + budget["spent"] == created["credits_reserved"]
        finally:
            with anyio.fail_after(120):
                stopped = await anyio.run_process([script, "stop"], env=env, check=False)
        assert stopped.returncode == 0, stopped.stderr.decode()
    assert not [pid for pid in pids if running(pid)]
    for port in [int(listen.rsplit(":", 1)[1]), *replicas]:
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def running(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
