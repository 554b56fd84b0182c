"""Settings from flags and the environment, in one place. Secrets are SecretStr: never printed or logged."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .gateway._constants import DEFAULT_BASE_URL

DEFAULT_BUDGET = 1000


class Settings(BaseSettings):
    """Every knob of the MCP server. Environment variables are the field names, upper-cased, after APIKEY_."""

    model_config = SettingsConfigDict(env_prefix="APIKEY_", extra="ignore", env_ignore_empty=True)

    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    auth_scheme: Literal["bearer", "x-api-key"] = "bearer"
    session_budget: int = Field(default=DEFAULT_BUDGET, ge=0, description="Credits this session may spend.")
    output_dir: Path | None = None
    max_download_bytes: int = Field(default=512 * 1024**2, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    poll_interval: float = Field(default=1.0, gt=0, description="First wait between task polls, in seconds.")
    max_poll_interval: float = Field(default=5.0, gt=0, description="Longest wait between task polls.")
    max_wait_seconds: float = Field(default=50.0, gt=0, description="Longest a poll_task call may wait.")
    docs_cache_seconds: float = Field(default=600.0, ge=0)
