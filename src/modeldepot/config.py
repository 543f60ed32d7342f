"""Settings: the only module that reads the environment.

Every server setting is a field of :class:`Settings`, set by a ``modeldepot serve`` option or a
``MODELDEPOT_*`` environment variable; ``docs/reference/settings.md`` lists them and a test checks it.
The CLI's few settings are in ``client/settings.py`` (kept free of pydantic, for a fast start).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr
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
        None,
        description="file:///PATH for local blobs, or s3://BUCKET/PREFIX?endpoint=URL&region=R for an "
        "S3-compatible store (credentials from the AWS environment). Default: the blobs/ folder of the data directory.",
    )
    public_url: str | None = Field(
        None, description="The URL clients reach this server at, when it differs from http://HOST:PORT."
    )
    data_port: int | None = Field(
        None,
        ge=-1,
        le=65535,
        description="Port of the data plane, which moves large files of the local blob store through signed "
        "URLs. Default: PORT + 1 (any free port when PORT is 0); 0: any free port; -1: off (all bytes then "
        "go through PORT). Unused with an S3 store, whose own URLs do this.",
    )
    data_public_url: str | None = Field(
        None,
        description="The URL clients reach the data plane at, when it differs from http://HOST:DATA_PORT "
        "(with public_url set, the default is its host with DATA_PORT).",
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
    upload_part_size: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Files larger than this are uploaded in parts of this size (S3 stores need 5 MiB or more).",
    )
    gc_interval_seconds: int = Field(
        3600,
        ge=0,
        description="How often the server collects unreferenced blobs and expired uploads (0: never).",
    )
    gc_grace_seconds: int = Field(
        3600, ge=0, description="An unreferenced blob is collected only once nobody touched it for this long."
    )
    signing_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="Secret that signs presigned URLs. Default: a random one kept in signing.key in the "
        "data directory. Give every replica the same one.",
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'modeldepot.db'}"

    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.data_dir / "blobs").resolve().as_uri()

    def resolved_signing_secret(self) -> bytes:
        """``signing_secret``, or the one in ``DATA_DIR/signing.key`` (mode 0600), made on first use.

        Kept in a file so that presigned URLs stay valid across restarts.
        """
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value().encode()
        path = self.data_dir / "signing.key"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temp file, then linked into place: a second process starting at
        # the same moment either wins the link or reads the winner's complete secret.
        tmp = path.with_name(f"signing.key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode() + b"\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_bytes().strip()
