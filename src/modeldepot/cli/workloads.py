"""``modeldepot workloads …``: the recorded runs that made models (lineage)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from ..records import WORKLOAD_STATES, Workload
from .context import make_client, project_option
from .output import emit_json, fields, json_option, table


def commit_text(w: Workload) -> str:
    if not w.git_commit:
        return ""
    return w.git_commit[:10] + ("-dirty" if w.git_dirty else "")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def series_text(series: dict[str, Any] | None) -> str:
    """``loss: 3 points, 0.9 → 0.3`` for each series."""
    parts = []
    for metric, points in (series or {}).items():
        values = points.get("values") or []
        span = f", {values[0]} → {values[-1]}" if values else ""
        parts.append(f"{metric}: {len(values)} point(s){span}")
    return "; ".join(parts)


@click.group("workloads")
def group() -> None:
    """The runs that made models: list them (by project, commit or state), show one, read its log.

    `modeldepot run … -- COMMAND` records them; so does the SDK's `modeldepot.workload(...)`.
    """


@group.command("list")
@project_option(help="Only this project (id or name).")
@click.option("--commit", help="Only runs at this git commit (4 or more hex digits of it).")
@click.option("--state", type=click.Choice(WORKLOAD_STATES), help="Only workloads in this state.")
@click.option("--name", help="Only runs that make a model of this name.")
@click.option("--limit", default=50, show_default=True, help="Workloads per page.")
@click.option("--cursor", help="Continue from a previous page's next cursor.")
@click.option("--all", "all_", is_flag=True, help="Follow every page.")
@json_option
def list_(
    project: str | None,
    commit: str | None,
    state: str | None,
    name: str | None,
    limit: int,
    cursor: str | None,
    all_: bool,
    as_json: bool,
) -> None:
    """List workloads, newest first, with the model each one made.

    \b
    Which models did a commit produce?
      modeldepot workloads list --commit 3f2a9c1 --state succeeded
    """
    client = make_client()
    filters: dict[str, Any] = {"project": project, "commit": commit, "state": state, "name": name}
    if all_:
        items = list(client.iter_workloads(limit=limit, **filters))
        next_cursor = None
    else:
        page = client.list_workloads(limit=limit, cursor=cursor, **filters)
        items, next_cursor = list(page.items), page.next_cursor
    if as_json:
        emit_json({"items": items, "next_cursor": next_cursor})
        return
    table(
        ["ID", "Name", "State", "Exit", "Model", "Commit", "Started", "Duration", "Host"],
        [
            (
                w.id,
                w.name,
                w.state,
                w.exit_code,
                w.model_id,
                commit_text(w),
                f"{w.started_at:%Y-%m-%d %H:%M}",
                duration_text(w.duration_seconds),
                w.host,
            )
            for w in items
        ],
    )
    if next_cursor:
        click.echo(f"More: --cursor {next_cursor} (or --all)")


@group.command("show")
@click.argument("workload_id")
@json_option
def show(workload_id: str, as_json: bool) -> None:
    """Show a workload: command, exit code, times, host, git commit, kept environment, metrics, model."""
    w = make_client().get_workload(workload_id)
    if as_json:
        emit_json(w)
        return
    ended = f"{w.ended_at:%Y-%m-%d %H:%M:%S} UTC" if w.ended_at else ""
    git = ""
    if w.git_commit:
        git = f"{w.git_commit} ({w.git_branch or 'detached'}{', dirty' if w.git_dirty else ', clean'})"
    fields(
        [
            ("ID", w.id),
            ("Project", w.project_id),
            ("Model name", w.name),
            ("State", w.state),
            ("Error", w.error),
            ("Model", w.model_id or "none"),
            ("Command", shlex.join(w.command)),
            ("Exit code", w.exit_code),
            ("Started", f"{w.started_at:%Y-%m-%d %H:%M:%S} UTC"),
            ("Ended", ended),
            ("Duration", duration_text(w.duration_seconds)),
            ("Host", w.host),
            ("User", f"{w.user} (API key of {w.created_by})"),
            ("Directory", w.working_dir),
            ("Git", git),
            ("Environment", " ".join(f"{k}={shlex.quote(v)}" for k, v in w.env.items())),
            ("Dataset", w.dataset_ref),
            ("Summary", json.dumps(w.summary) if w.summary else ""),
            ("Series", series_text(w.series)),
            ("Log", f"{w.log_bytes} bytes: modeldepot workloads logs {w.id}"),
        ]
    )


@group.command("logs")
@click.argument("workload_id")
@json_option
def logs(workload_id: str, as_json: bool) -> None:
    """Print the output a workload captured.

    A long log keeps its first 64 KiB and last 448 KiB, with a line saying how much was left out.
    """
    client = make_client()
    text = client.workload_log(workload_id)
    if as_json:
        emit_json({"id": workload_id, "log": text, "log_bytes": client.get_workload(workload_id).log_bytes})
    else:
        click.echo(text, nl=False)
