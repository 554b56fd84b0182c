"""Replica mode is chosen by a PostgreSQL ledger, and refuses, at start, what cannot work across replicas."""

from __future__ import annotations

import logging

import pytest
from mcp.server.request_state import InvalidRequestState

from apikey_mcp.config import Settings
from apikey_mcp.errors import ConfigError
from apikey_mcp.hosted import create_app
from apikey_mcp.replicas.mode import replica_mode, request_state_security

pytestmark = pytest.mark.slow  # replicas behind nginx on PostgreSQL

URL = "postgresql://apikey@db.example:5432/ledger"  # never connected to: the checks come first
KEY = "0123456789abcdef" * 4


def settings(**values: object) -> Settings:
    base: dict[str, object] = {"transport": "streamable-http", "database_url": URL, "request_state_key": KEY}
    return Settings(**(base | values))


def paths(app: object) -> set[str]:
    return {getattr(route, "path", "") for route in app.routes}  # type: ignore[attr-defined]


def test_replica_mode_needs_a_hosted_transport_and_a_postgresql_ledger() -> None:
    assert replica_mode(settings())
    assert not replica_mode(settings(transport="stdio"))
    assert not replica_mode(settings(database_url=None))


@pytest.mark.parametrize("key", [None, "too-short"])
def test_without_a_shared_request_state_key_the_server_refuses_to_start(key: str | None) -> None:
    with pytest.raises(ConfigError, match=r"APIKEY_REQUEST_STATE_KEY must be set .* the same on every replica"):
        create_app(settings(request_state_key=key))


def test_sse_is_refused_and_not_served_with_both_transports(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="SSE keeps each session in one process"):
        create_app(settings(transport="sse"))
    with caplog.at_level(logging.WARNING, logger="apikey_mcp"):
        app = create_app(settings(transport="http"))
    assert "/mcp" in paths(app) and not {"/sse", "/messages"} & paths(app)
    assert "/sse is not served" in caplog.text


def test_single_process_hosting_is_unchanged(tmp_path: object) -> None:
    app = create_app(Settings(transport="http", state_file=tmp_path / "state.sqlite3"))  # type: ignore[operator]
    assert {"/mcp", "/sse"} <= paths(app)


def test_request_state_sealed_by_one_replica_is_opened_by_another_with_the_same_key() -> None:
    sealed = request_state_security(settings()).codec.seal(b"budget question, round 1")
    assert request_state_security(settings()).codec.unseal(sealed) == b"budget question, round 1"
    with pytest.raises(InvalidRequestState):  # a key not shared cannot open it: "Invalid or expired requestState"
        request_state_security(settings(request_state_key="f" * 64)).codec.unseal(sealed)
