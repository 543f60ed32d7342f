"""Where the CLI and the SDK's defaults find the server: ``MODELDEPOT_URL`` / ``MODELDEPOT_API_KEY``
or the file ``modeldepot login`` writes.

A plain dataclass read straight from the environment, not a pydantic settings class like the
server's (``config.Settings``): importing pydantic cost every CLI command about 55 ms of its start.
``docs/reference/settings.md`` lists these fields too, from their descriptions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

PREFIX = "MODELDEPOT_"


def _config_file() -> Path:
    return (
        Path(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")) / "modeldepot" / "config.json"
    )


def _hash_cache() -> Path | None:
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "modeldepot" / "hashes.db"


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    # Without a description, the reference shows the help of the CLI option of the same name.
    url: str | None = None
    api_key: str | None = None
    config_file: Path = dataclasses.field(
        default_factory=_config_file,
        metadata={"description": "Where `modeldepot login` stores the URL and key."},
    )
    hash_cache: Path | None = dataclasses.field(
        default_factory=_hash_cache,
        metadata={
            "description": "Where the CLI remembers file digests, so unchanged files are not hashed again "
            "on re-upload (MODELDEPOT_HASH_CACHE=none: off)."
        },
    )

    @classmethod
    def from_env(cls) -> ClientSettings:
        """The settings from ``MODELDEPOT_<NAME>`` variables."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(PREFIX + field.name.upper())
            if raw is None:
                continue
            if field.name == "hash_cache" and raw.strip().lower() in ("", "0", "off", "none"):
                values[field.name] = None
            elif field.name in ("config_file", "hash_cache"):
                values[field.name] = Path(raw).expanduser()
            else:
                values[field.name] = raw
        return cls(**values)

    def stored(self) -> dict[str, Any]:
        try:
            data = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
