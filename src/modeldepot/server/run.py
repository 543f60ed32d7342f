"""Running the server: bind, bootstrap the first key, print the URL, serve with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from typing import Any, NoReturn

import click
import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..errors import ModeldepotError
from .app import create_app
from .dataplane import DataPlane, start_data_plane
from .listen import bind


def _fail(message: str, hint: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    click.echo(f"Hint: {hint}", err=True)
    sys.exit(1)


def run(overrides: dict[str, Any], options: Collection[str] = ()) -> None:
    """Start the server with these settings over the environment's; ``options``: the settings that
    ``modeldepot serve`` takes as options (named in hints)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        where = f"MODELDEPOT_{name.upper()}"
        _fail(
            f"setting {name} is invalid: {first['msg']}",
            f"Check the --{name.replace('_', '-')} option or {where}."
            if name in options
            else f"Check {where}.",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        _fail(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            "Pick another port with --port (or MODELDEPOT_PORT).",
        )
    try:
        app = create_app(settings)
    except ValueError as exc:  # e.g. an unsupported --blob-url
        sock.close()
        _fail(str(exc), "See `modeldepot serve --help` and docs/reference/settings.md.")
    except ModuleNotFoundError as exc:
        sock.close()
        _fail(
            f"the database driver {exc.name!r} is not installed",
            'Install it: pip install "modeldepot[postgres]".',
        )
    except SQLAlchemyError as exc:
        sock.close()
        _fail(
            f"cannot open the database {_redact(settings.resolved_database_url())}: {exc.__class__.__name__}",
            "Check --database-url (MODELDEPOT_DATABASE_URL) and that the database server is running.",
        )
    try:
        app.state.services.models.blobs.check()
        app.state.services.maintenance.check_pairing()
    except ModeldepotError as exc:
        sock.close()
        _fail(exc.detail, exc.hint or "See docs/reference/settings.md.")
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    url = settings.public_url or f"http://{shown_host}:{port}"
    plane = _start_data_plane(settings, app, url)
    new_key = app.state.services.auth.bootstrap(settings.bootstrap_admin_key)
    click.echo(f"modeldepot is running at {url}")
    click.echo(f"  database: {_redact(settings.resolved_database_url())}")
    click.echo(f"  blobs:    {settings.resolved_blob_url()}")
    if plane is not None:
        click.echo(f"  data:     {plane.url} (large files, signed URLs)")
    if new_key is not None and settings.bootstrap_admin_key is None:
        click.echo("")
        click.echo("First start: an admin API key was created. It is shown only this once:")
        click.echo(f"  {new_key.secret}")
        click.echo(f"  modeldepot login --url {url} --api-key {new_key.secret}")
    elif new_key is not None:
        click.echo("First start: the admin key from MODELDEPOT_BOOTSTRAP_ADMIN_KEY is in place.")
    click.echo("Press Ctrl-C to stop.", err=False)
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if plane is not None:
            plane.stop()


def _start_data_plane(settings: Settings, app: Any, api_url: str) -> DataPlane | None:
    try:
        return start_data_plane(app, settings, api_url)
    except OSError as exc:
        _fail(
            f"cannot listen on {settings.host} port {exc.filename} for the data plane: {exc.strerror}",
            "Pick its port with --data-port (MODELDEPOT_DATA_PORT), or turn it off with --data-port -1.",
        )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
