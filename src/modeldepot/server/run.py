"""Running the server: bind, bootstrap the first key, print the URL, serve with uvicorn."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import click
import uvicorn

from ..config import Settings
from .app import create_app


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(overrides: dict[str, Any]) -> None:
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        click.echo(f"Error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", err=True)
        click.echo("Hint: pick another port with --port (or MODELDEPOT_PORT).", err=True)
        sys.exit(1)
    app = create_app(settings)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    url = settings.public_url or f"http://{shown_host}:{port}"
    new_key = app.state.services.auth.bootstrap(settings.bootstrap_admin_key)
    click.echo(f"modeldepot is running at {url}")
    click.echo(f"  database: {_redact(settings.resolved_database_url())}")
    click.echo(f"  blobs:    {settings.resolved_blob_url()}")
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
    uvicorn.Server(config).run(sockets=[sock])


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
