"""Finding the server and key: ``--url``/``--api-key``, then MODELDEPOT_URL/_API_KEY, then the login file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import click

from ..client import Client
from ..client.args import server_url
from ..client.settings import ClientSettings
from ..errors import InvalidInput, NotFound, Unauthenticated


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
    from_env = ctx.find_root().get_parameter_source("url") == click.core.ParameterSource.ENVIRONMENT
    sources = [(root.get("url"), "MODELDEPOT_URL" if from_env else "--url"), (s.url, "MODELDEPOT_URL")]
    sources.append((stored.get("url"), f"{s.config_file} (written by `modeldepot login`)"))
    url, source = next(((u, where) for u, where in sources if u), (None, ""))
    key = root.get("api_key") or s.api_key or stored.get("api_key")
    if not url:
        raise Unauthenticated(
            "No server configured", hint="Run `modeldepot login --url http://HOST:PORT --api-key KEY` first."
        )
    try:
        url = server_url(url)
    except InvalidInput as exc:  # say where the bad URL came from
        raise InvalidInput(f"{exc.detail} (from {source})", hint=exc.hint) from None
    client = Client(url, key, parallel=parallel, hash_cache=s.hash_cache)
    ctx.call_on_close(client.close)
    return client


_PROJECT_ID = re.compile(r"pr[0-9a-z]{7}")


def _project(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A project given by its id (pr…, used as it is) or by its name (looked up: one must match)."""
    if value is None or _PROJECT_ID.fullmatch(value):
        return value
    named = [p for p in make_client().list_projects() if p.name == value]
    if len(named) == 1:
        return named[0].id
    if named:
        raise InvalidInput(
            f"{len(named)} projects are named {value!r}: {', '.join(p.id for p in named)}",
            hint="Give the id of the one you mean.",
        )
    raise NotFound(
        f"Project {value!r} not found: no project has that id or name",
        hint="`modeldepot projects list` shows the projects this API key may see.",
    )


def project_option(*, required: bool = False, help: str = "Project id (pr…) or name.") -> Any:
    """``--project``: an id, or a name this key can see (resolved to the id before the command runs)."""
    return click.option("--project", required=required, callback=_project, help=help)
