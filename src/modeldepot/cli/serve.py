"""``modeldepot serve``: the server on SQLite and a local directory unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--host", default=None, help="Interface to listen on [MODELDEPOT_HOST, default 127.0.0.1].")
@click.option(
    "--port", type=int, default=None, help="Port [MODELDEPOT_PORT, default 8750; 0 = any free port]."
)
@click.option(
    "--data-port",
    type=int,
    default=None,
    help="Port of the data plane that moves large files for local blobs [MODELDEPOT_DATA_PORT, default PORT+1; "
    "0 = any free port; -1 = off].",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the SQLite database and blobs live [MODELDEPOT_DATA_DIR, default ~/.local/share/modeldepot].",
)
@click.option(
    "--database-url",
    default=None,
    help="Metadata database: sqlite:///PATH or postgresql://USER@HOST/DB [MODELDEPOT_DATABASE_URL].",
)
@click.option(
    "--blob-url",
    default=None,
    help="Where file bytes go: file:///PATH or s3://BUCKET/PREFIX?endpoint=URL [MODELDEPOT_BLOB_URL, default DATA_DIR/blobs].",
)
def serve(**options: Any) -> None:
    """Run the modeldepot server.

    On first start it creates an admin API key and prints it once (or takes
    MODELDEPOT_BOOTSTRAP_ADMIN_KEY). Every option can also be set as MODELDEPOT_<NAME>.

    \b
    Example:
      modeldepot serve --port 8750 --data-dir ./modeldepot-data
    """
    from ..server.run import run  # the one place the CLI reaches the server side

    run({k: v for k, v in options.items() if v is not None}, options=set(options))
