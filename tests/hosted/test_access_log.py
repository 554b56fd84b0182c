"""The hosted access log: one line per request, with method, path, status, duration and principal or "anonymous",
and never a token, a key or a query string."""

from __future__ import annotations

import logging
import re

import httpx2
import pytest

from tests.conftest import KEY, wait_until
from tests.hosted.conftest import ALICE, Hosted, post_initialize

LINE = r"^(GET|POST|DELETE) \S+ \d{3} \d+\.\d ms \S+$"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "apikey_mcp.access"]


async def test_a_401_leaves_a_line_naming_anonymous_and_the_status(
    hosted: Hosted, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apikey_mcp.access")
    wrong = "wrong-token-0123456789abcdef"
    refused = await post_initialize(f"{hosted.url}/mcp?access_token=secret-in-query", wrong)
    assert refused.status_code == 401
    await wait_until(lambda: len(access_lines(caplog)) >= 1)
    [line] = access_lines(caplog)
    assert line.startswith("POST /mcp 401 ") and line.endswith(" ms anonymous")
    record = next(r for r in caplog.records if r.name == "apikey_mcp.access")
    fields = {k: getattr(record, k) for k in ("method", "path", "status", "principal")}  # for a structured formatter
    assert fields == {"method": "POST", "path": "/mcp", "status": 401, "principal": "anonymous"}
    assert wrong not in caplog.text and "secret-in-query" not in caplog.text and "access_token" not in caplog.text


async def test_each_request_is_one_line_with_its_principal(hosted: Hosted, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apikey_mcp.access")
    accepted = await post_initialize(f"{hosted.url}/mcp", ALICE)
    async with httpx2.AsyncClient() as http:
        health = await http.get(f"{hosted.url}/healthz")
    assert accepted.status_code == 200 and health.status_code == 200
    await wait_until(lambda: len(access_lines(caplog)) >= 2)
    lines = access_lines(caplog)
    assert [line.split(" ")[:3] for line in lines] == [["POST", "/mcp", "200"], ["GET", "/healthz", "200"]]
    assert lines[0].endswith(" ms alice") and lines[1].endswith(" ms anonymous")
    assert ALICE not in caplog.text and KEY not in caplog.text
    assert all(re.match(LINE, line) for line in lines)
