"""Finding the server and key: ``--url``/``--api-key``, then MODELDEPOT_URL/_API_KEY, then the login file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..client import Client
from ..client.settings import ClientSettings
from ..errors import Unauthenticated


def settings() -> ClientSettings:
    return ClientSettings.from_env()


def save_login(url: str, api_key: str) -> Path:
    path = settings().config_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url.rstrip("/"), "api_key": api_key}, f, indent=2)
        f.write("\n")
    os.chmod(path, 0o600)  # also when the file existed with looser bits
    return path


def make_client(parallel: int = 4) -> Client:
    ctx = click.get_current_context()
    root = ctx.find_root().params
    s = settings()
    stored = s.stored()
    url = root.get("url") or s.url or stored.get("url")
    key = root.get("api_key") or s.api_key or stored.get("api_key")
    if not url:
        raise Unauthenticated(
            "No server configured", hint="Run `modeldepot login --url http://HOST:PORT --api-key KEY` first."
        )
    client = Client(url, key, parallel=parallel, hash_cache=s.hash_cache)
    ctx.call_on_close(client.close)
    return client
