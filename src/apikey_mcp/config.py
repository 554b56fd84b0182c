"""Settings from flags and the environment, in one place. Secrets are SecretStr: never printed or logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .gateway.constants import DEFAULT_BASE_URL

DEFAULT_BUDGET = 1000
MAX_WAIT_SECONDS = 55  # one poll_task call waits at most this long: under the 60 s tool timeout of many clients


def origin(url: str) -> str:
    """`https://host[:port]` of a URL; ValueError when it has no http(s) scheme or host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) origin: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _origin(url: str) -> str:
    """An http(s) URL as the origin a CSP names (`https://host[:port]`), or a setting error."""
    try:
        return origin(url)
    except ValueError:
        raise PydanticCustomError("url_origin", "must be an http(s) origin") from None


class Settings(BaseSettings):
    """Every knob of the MCP server. Environment variables are the field names, upper-cased, after APIKEY_."""

    model_config = SettingsConfigDict(
        env_prefix="APIKEY_", extra="ignore", env_ignore_empty=True, populate_by_name=True
    )

    sandbox: bool = Field(
        default=False, description="Start the sandbox gateway in-process and use it (no account; nothing is billed)."
    )
    base_url: str = Field(default=DEFAULT_BASE_URL, description="Gateway URL.")
    api_key: SecretStr | None = Field(
        default=None, description="Gateway key. Prefer the environment: flags show in process lists."
    )
    auth_scheme: Literal["bearer", "x-api-key"] = Field(
        default="bearer", description="How the key is sent: bearer (Authorization header) or x-api-key."
    )
    session_budget: int = Field(default=DEFAULT_BUDGET, ge=0, description="Credits this session may spend.")
    output_dir: Path | None = Field(default=None, description="Also download finished results here.")
    max_download_bytes: int = Field(default=512 * 1024**2, gt=0, description="Size cap per downloaded file.")
    max_task_download_bytes: int = Field(default=1024**3, gt=0, description="Size cap on one task's files together.")
    download_deadline_seconds: float = Field(default=600.0, gt=0, description="Longest one task's save may take.")
    max_output_dir_bytes: int = Field(default=10 * 1024**3, gt=0, description="Quota on the output directory.")
    allow_private_downloads: bool = Field(
        default=False, description="Fetch results from loopback, private and link-local hosts too."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Logs go to stderr and, for key events, to the client."
    )
    media_origins: Annotated[list[Annotated[str, AfterValidator(_origin)]], NoDecode] = Field(
        default_factory=list, description="Origins result files load from in the media app (comma-separated)."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="stderr lines: text, or JSON objects.")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Serve Prometheus /metrics here.")
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics listener.")
    metrics_max_principals: int = Field(default=100, gt=0, description="Principal labels; the rest are _other.")
    principal: str | None = Field(
        default=None, min_length=1, max_length=200, description="stdio: whose spending the ledger records (OS user)."
    )
    poll_interval: float = Field(default=1.0, gt=0, description="First wait between task polls, in seconds.")
    max_poll_interval: float = Field(default=5.0, gt=0, description="Longest wait between task polls.")
    fresh_seconds: float = Field(
        default=1.0, ge=0, description="How old a task's known state may be for poll_task to answer without a poll."
    )
    max_wait_seconds: float = Field(
        default=MAX_WAIT_SECONDS, gt=0, le=MAX_WAIT_SECONDS, description="Longest a poll_task call may wait."
    )
    docs_cache_seconds: float = Field(default=600.0, ge=0, description="How long docs and the model list are cached.")
    task_retention_seconds: float = Field(
        default=900.0, ge=0, description="How long a finished task stays in memory (the state file keeps it)."
    )
    lost_after_seconds: float = Field(
        default=60.0, gt=0, description="How long the gateway must answer 404 for a task before it is marked lost."
    )

    # Spending policy (policy.py): confirmation, and the default policy of new principals
    confirm_above: int | None = Field(default=None, ge=0, description="Ask the human before a call above this.")
    max_per_call: int | None = Field(default=None, ge=0, description="New principals: credits one call may cost.")
    allow: str | None = Field(default=None, description="New principals: allowed models or modalities (a,b,c).")
    period: Literal["none", "day", "week", "month"] = Field(default="none", description="New principals' period.")
    alert_at: int | None = Field(default=None, ge=1, le=100, description="New principals: alert at this percent.")
    alert_webhook: str | None = Field(default=None, description="POST budget alerts here, signed.")
    alert_secret: SecretStr | None = Field(default=None, description="Signs alert webhooks (not the gateway's).")

    # Hosted mode (--transport http | sse | streamable-http)
    transport: Literal["stdio", "http", "sse", "streamable-http"] = Field(
        default="stdio",
        description="stdio, or hosted: http (Streamable HTTP at /mcp and SSE at /sse), streamable-http, sse.",
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on when hosted.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on when hosted.")
    public_url: str | None = Field(default=None, description="Where the gateway can reach us, for callbacks.")
    state_file: Path | None = Field(default=None, description="SQLite ledger: budgets, reservations, audit trail.")
    database_url: SecretStr | None = Field(
        default=None, description="postgresql://... : keep the ledger in PostgreSQL (several processes or machines)."
    )
    auth_tokens: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("auth_tokens", "APIKEY_MCP_AUTH_TOKENS"),
        description="name=token pairs, comma-separated: one principal per token.",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("auth_tokens_file", "APIKEY_MCP_AUTH_TOKENS_FILE"),
        description="A file of name=token lines, instead of or beside APIKEY_MCP_AUTH_TOKENS.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="Secret that signs the gateway's callbacks (required with --public-url)."
    )
    oauth_issuer: str | None = Field(default=None, description="OAuth authorization server whose JWTs we accept.")
    oauth_audience: str | None = Field(default=None, description="The audience OAuth tokens must name.")
    oauth_scope: str | None = Field(default="apikey", description="Scope a token needs (403 without it).")
    oauth_algorithms: str = Field(default="RS256,PS256,ES256,EdDSA", description="Allowed JWT algorithms (a,b,c).")
    allowed_hosts: list[str] = Field(default_factory=list, description="Extra Host headers to accept (proxies).")
    max_sessions: int = Field(default=10_000, gt=0, description="Streamable HTTP sessions open at once, in all.")
    max_sessions_per_principal: int = Field(
        default=16, gt=0, description="Open Streamable HTTP sessions per principal."
    )
    max_sse_streams_per_principal: int = Field(default=8, gt=0, description="Open SSE streams per principal.")
    max_listens_per_principal: int = Field(
        default=8, gt=0, description="Open subscriptions/listen streams per principal."
    )
    auth_failures_per_minute: int = Field(
        default=20, gt=0, description="Failed authentications per client address and minute before 429."
    )
    forwarded_allow_ips: str | None = Field(
        default=None, description="Proxies whose X-Forwarded-For names the client (for the auth throttle)."
    )
    max_body_bytes: int = Field(default=1024**2, gt=0, description="Largest request body accepted.")
    allow_byok: bool = Field(default=False, description="Let clients send their own gateway key in a header.")
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="How long calls in flight may take to finish when the server stops."
    )

    # Replica mode (hosted on a PostgreSQL ledger): many replicas behind a load balancer
    request_state_key: SecretStr | None = Field(
        default=None, description="Seals request state; the same on every replica (at least 32 characters)."
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="How long a replica's claim to watch a task lasts unless it renews it."
    )

    @field_validator("media_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        """`APIKEY_MEDIA_ORIGINS=https://a,https://b` (or a JSON list), or a list (flags)."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        return [item for item in value if str(item).strip()] if isinstance(value, list) else value

    def secrets(self) -> list[SecretStr]:
        """Every secret configured (each client token and the database password apart): what redaction removes
        from text taken from the gateway, whatever setting it came from."""
        found: list[SecretStr] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if not isinstance(value, SecretStr) or not value.get_secret_value():
                continue
            found.append(value)
            text = value.get_secret_value()
            if name == "auth_tokens":
                found += [SecretStr(e.split("=", 1)[1].strip()) for e in text.split(",") if "=" in e]
            elif "://" in text and (password := urlsplit(text).password):
                found.append(SecretStr(password))
        return [s for s in found if s.get_secret_value()]
