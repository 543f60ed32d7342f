"""Printing: rich tables for people, ``--json`` for scripts, progress bars only on a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ..records import to_json

# Not on a terminal (pipes, CI logs) rich would wrap tables at 80 columns: give them room instead.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def note_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # ctx.meta is shared by every context of a command line: the error handler reads it there.
    if value:
        ctx.meta[JSON_ERRORS] = True
    return value


# Set when the command was given --json: an error is then printed as JSON too (on stderr).
JSON_ERRORS = "modeldepot.json"
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=note_json,
    help="Print JSON instead of a table (and an error as a JSON object on stderr).",
)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(to_json(value), indent=2, sort_keys=True, ensure_ascii=False))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    t = Table(title=title, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console.print(t)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, value in pairs:
        t.add_row(key, "" if value is None else str(value))
    console.print(t)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class Bar:
    """The SDK's Progress protocol as a rich progress bar on stderr (silent when not a terminal)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, phase: str, total_bytes: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn(f"{phase:<11}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(phase, total=total_bytes)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
