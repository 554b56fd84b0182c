"""`apikey-mcp sandbox` as a user runs it: it prints where it is and its keys, and each key has a wallet."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.harness import Processes


@pytest.mark.slow
async def test_the_sandbox_command_prints_its_url_and_keys_and_keeps_a_wallet_per_key(tmp_path: Path) -> None:
    with Processes(tmp_path) as processes:
        process = processes.sandbox(["sk-one-1111", "sk-two-2222"], credits=500, hold=True)
        await process.wait_ready(seconds=30)
        banner = "".join(process.log.read_text().splitlines(keepends=True)[:5])  # printed before it listens
        base = process.url
        async with httpx2.AsyncClient(base_url=base) as http:
            video = {"model": "seedance-2-fast", "prompt": "x", "duration": 5}
            created = await http.post("/v1/videos", json=video, headers={"Authorization": "Bearer sk-one-1111"})
            wallets = [
                (await http.get("/sandbox/wallet", headers={"x-api-key": key})).json()
                for key in ("sk-one-1111", "sk-two-2222")
            ]
    assert "SANDBOX" in banner and base in banner and "sk-one-1111" in banner and "sk-two-2222" in banner
    assert created.status_code == 200
    assert wallets == [
        {"balance": 500, "reserved": 40, "available": 460},
        {"balance": 500, "reserved": 0, "available": 500},
    ]


def test_the_in_process_sandbox_is_built_only_when_its_first_request_arrives() -> None:
    from apikey_mcp.sandbox_on_demand import SandboxOnDemand

    with SandboxOnDemand("sk-lazy-1234", "whsec_lazy") as idle:
        assert idle.url.startswith("http://127.0.0.1:") and idle._server is None
    assert not idle._thread.is_alive(), "stopped though nobody ever asked"

    with SandboxOnDemand("sk-lazy-1234", "whsec_lazy") as sandbox:
        unbuilt = sandbox._server is None
        with httpx2.Client(base_url=sandbox.url, timeout=30) as http:  # waits in the backlog meanwhile
            health = http.get("/healthz")
            wallet = http.get("/sandbox/wallet", headers={"x-api-key": "sk-lazy-1234"})
    assert unbuilt and health.status_code == 200 and wallet.json()["balance"] == 100_000
    assert not sandbox._thread.is_alive()
