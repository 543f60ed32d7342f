"""Settings: the only module that reads the environment.

Every server setting is a field of :class:`Settings`, set by a ``modeldepot serve`` option or a
``MODELDEPOT_*`` environment variable; ``docs/reference/settings.md`` lists them and a test checks it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "modeldepot"


class Settings(BaseSettings):
    """Server settings (``MODELDEPOT_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="MODELDEPOT_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the server listens on.")
    port: int = Field(8750, ge=0, le=65535, description="TCP port the server listens on (0: any free port).")
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for the SQLite database and local blobs (default ~/.local/share/modeldepot).",
    )
    database_url: str | None = Field(
        None,
        description="sqlite:///PATH or postgresql://USER@HOST/DB. Default: SQLite in the data directory.",
    )
    blob_url: str | None = Field(
        None, description="file:///PATH for local blobs. Default: the blobs/ folder of the data directory."
    )
    public_url: str | None = Field(
        None, description="The URL clients reach this server at, when it differs from http://HOST:PORT."
    )
    bootstrap_admin_key: str | None = Field(
        None,
        description="Use this as the first admin API key instead of generating one (only while no key exists).",
    )
    upload_expiry_seconds: int = Field(
        24 * 3600, ge=60, description="An upload not committed within this time is abandoned and cleaned up."
    )
    max_json_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body accepted (model manifests included).",
    )
    max_summary_bytes: int = Field(64 * 1024, ge=256, description="Largest model summary, as JSON.")
    max_metadata_bytes: int = Field(1024 * 1024, ge=256, description="Largest model metadata, as JSON.")
    max_files_per_model: int = Field(200_000, ge=1, description="Most files one model may hold.")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'modeldepot.db'}"

    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.data_dir / "blobs").resolve().as_uri()


class ClientSettings(BaseSettings):
    """Where the CLI and SDK find the server: ``MODELDEPOT_URL`` / ``MODELDEPOT_API_KEY`` or the login file."""

    model_config = SettingsConfigDict(env_prefix="MODELDEPOT_", extra="ignore")

    url: str | None = None
    api_key: str | None = None
    config_file: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config"))
            / "modeldepot"
            / "config.json"
        )
    )

    def stored(self) -> dict[str, Any]:
        try:
            data = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
