"""OAuth 2.1 resource server against a real authorization server (oidc-provider on loopback).

These mirror the resource-server checks of the MCP conformance suite's server auth scenarios (PRM discovery,
the 401 and its WWW-Authenticate header, token audience), which the published suite (0.1.16) does not ship.
"""

from __future__ import annotations

import json
import time

import anyio
import httpx2
import pytest

from apikey_mcp.hosted import oauth
from tests.hosted.conftest import ALICE, Hosted, post_initialize
from tests.hosted.issuer import CLIENTS, Issuer, issuer, tampered, unsigned  # noqa: F401  (issuer is a fixture)
from tests.node import NODE_DIR
from tests.server.conftest import call, call_error

pytestmark = pytest.mark.slow  # a node OAuth authorization server


@pytest.fixture
def oauth_hosted(hosted_factory, issuer: Issuer) -> Hosted:  # noqa: F811
    return hosted_factory(oauth_issuer=issuer.url)


def metadata_url(hosted: Hosted) -> str:
    return f"{hosted.url}/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_valid_token_lists_and_calls_tools_as_issuer_and_subject(
    oauth_hosted: Hosted,
    issuer: Issuer,  # noqa: F811 (the fixture)
    transport: str,
) -> None:
    token_a = issuer.token(f"{oauth_hosted.url}/mcp", client="agent-a")
    token_b = issuer.token(f"{oauth_hosted.url}/mcp", client="agent-b")
    async with oauth_hosted.connect(transport, token_a) as a, oauth_hosted.connect(transport, token_b) as b:
        tools = {t.name for t in (await a.list_tools()).tools}
        created = await call(a, "generate_image", prompt="a lighthouse", model="flux-schnell")
        hidden = await call_error(b, "poll_task", task_id=created["task_id"], wait_seconds=0)
        budget_b = await call(b, "budget_status")
    assert {"budget_status", "generate_image", "poll_task"} <= tools
    assert "task_not_found" in hidden and budget_b["spent"] == budget_b["reserved"] == 0
    assert {f"{issuer.url}#agent-a", f"{issuer.url}#agent-b"} <= set(oauth_hosted.accounts.principals())


def _wrong_audience(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    return issuer.token("http://127.0.0.1:9/mcp")


def _wrong_issuer(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    return issuer.token(f"{hosted.url}/mcp", issuer=issuer.other)  # signed with the same key: only `iss` differs


def _expired(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    late = int(time.time()) - int(oauth.CLOCK_SKEW_SECONDS) - 60
    return issuer.resign(issuer.token(f"{hosted.url}/mcp"), exp=late, iat=late - 300)


def _tampered(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    return tampered(issuer.token(f"{hosted.url}/mcp"), sub="agent-b")


def _alg_none(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    return unsigned(issuer.token(f"{hosted.url}/mcp"))


def _static_token(issuer: Issuer, hosted: Hosted) -> str:  # noqa: F811
    return ALICE  # an operator token is not taken on the OAuth door


@pytest.mark.parametrize(
    "make", [_wrong_audience, _wrong_issuer, _expired, _tampered, _alg_none, _static_token, lambda i, h: None]
)
@pytest.mark.parametrize("path", ["/mcp", "/sse"])
async def test_a_bad_token_is_401_pointing_at_the_resource_metadata(
    oauth_hosted: Hosted,
    issuer: Issuer,  # noqa: F811 (the fixture)
    make,
    path: str,
) -> None:
    token = make(issuer, oauth_hosted)
    if path == "/mcp":
        response = await post_initialize(f"{oauth_hosted.url}/mcp", token)
    else:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(f"{oauth_hosted.url}/sse", headers={"Authorization": f"Bearer {token}"})
    challenge = response.headers["www-authenticate"]
    assert response.status_code == 401
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert f'resource_metadata="{metadata_url(oauth_hosted)}"' in challenge


async def test_a_token_without_the_scope_is_403(oauth_hosted: Hosted, issuer: Issuer) -> None:  # noqa: F811
    token = issuer.token(f"{oauth_hosted.url}/mcp", scope="other")
    response = await post_initialize(f"{oauth_hosted.url}/mcp", token)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="apikey"' in challenge
    assert f'resource_metadata="{metadata_url(oauth_hosted)}"' in challenge
    assert oauth_hosted.accounts.principals() == []  # no budget without the scope


async def test_the_protected_resource_metadata_names_the_issuer(oauth_hosted: Hosted, issuer: Issuer) -> None:  # noqa: F811
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(metadata_url(oauth_hosted))
        root = await http.get(f"{oauth_hosted.url}/.well-known/oauth-protected-resource")
        static = await http.get(f"{oauth_hosted.url}/.well-known/oauth-protected-resource/token/mcp")
        issuer_metadata = (await http.get(f"{oauth_hosted.url}/.well-known/oauth-authorization-server")).status_code
    document = response.json()
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert document["resource"] == f"{oauth_hosted.url}/mcp"
    assert document["authorization_servers"] == [issuer.url]  # exactly the issuer (RFC 8414 compares strings)
    assert document["scopes_supported"] == ["apikey"] and "header" in document["bearer_methods_supported"]
    assert root.status_code == static.status_code == issuer_metadata == 404  # we are no authorization server


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_operator_tokens_keep_working_on_a_door_that_advertises_no_oauth(
    oauth_hosted: Hosted, transport: str
) -> None:
    async with oauth_hosted.connect(transport, ALICE, prefix="/token") as client:
        budget = await call(client, "budget_status")
    refused = await post_initialize(f"{oauth_hosted.url}/token/mcp", "not-a-valid-token-at-all")
    assert budget["budget"] == 1000
    assert refused.status_code == 401 and "resource_metadata" not in refused.headers["www-authenticate"]


async def test_without_an_issuer_nothing_advertises_oauth(hosted: Hosted) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        document = await http.get(f"{hosted.url}/.well-known/oauth-protected-resource/mcp")
    refused = await post_initialize(f"{hosted.url}/mcp", None)
    assert document.status_code == 404
    assert refused.status_code == 401 and "resource_metadata" not in refused.headers["www-authenticate"]


async def test_the_typescript_sdk_finds_the_issuer_and_signs_in_by_itself(
    oauth_hosted: Hosted,
    issuer: Issuer,  # noqa: F811
) -> None:
    script = NODE_DIR / "oauth_client.mjs"
    command = ["node", str(script), f"{oauth_hosted.url}/mcp", issuer.url, "agent-b", CLIENTS["agent-b"]]
    result = await anyio.run_process(command, check=False)
    assert result.returncode == 0, result.stderr.decode()
    seen = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert "generate_image" in seen["tools"] and seen["budget"]["budget"] == 1000
    assert f"{issuer.url}#agent-b" in oauth_hosted.accounts.principals()
