"""``modeldepot models …``"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from ..client import Client
from ..errors import InvalidInput
from ..records import Model
from .context import make_client, project_option
from .output import Bar, emit_json, err_console, fields, human_size, json_option, table
from .workloads import commit_text, series_text

TYPES = click.Choice(["Tensorflow", "ONNX", "Custom"], case_sensitive=False)


def _json_object(value: str | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON: {exc}", hint="e.g. --summary '{\"accuracy\": 0.9}'"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"{what} must be a JSON object, not {type(parsed).__name__}")
    return parsed


@contextlib.contextmanager
def _resumes_when_interrupted(what: str) -> Iterator[None]:
    """Ctrl-C: say how to go on (the same command again resumes) and exit with 130, as a shell does."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(
            f"Interrupted. Run the same command again to resume the {what} where it stopped.", highlight=False
        )
        sys.exit(130)


@click.group("models")
def group() -> None:
    """Upload, list, show, download, change and delete models."""


@group.command("upload")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name (versions count up per name).")
@project_option(required=True)
@click.option("--type", "type_", type=TYPES, help="Tensorflow, ONNX or Custom (detected when left out).")
@click.option("--summary", help="Metrics as a JSON object, e.g. '{\"accuracy\": 0.71}'.")
@click.option("--notes", help="Notes (Markdown).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for more).")
@click.option("--metadata", help="Free metadata as a JSON object.")
@click.option("--dataset-ref", help="The data the model was trained on.")
@click.option(
    "--parallel", default=4, show_default=True, type=click.IntRange(1, 64), help="Transfers at once."
)
@json_option
def upload(
    path: Path,
    name: str,
    project: str,
    type_: str | None,
    summary: str | None,
    notes: str | None,
    tags: tuple[str, ...],
    metadata: str | None,
    dataset_ref: str | None,
    parallel: int,
    as_json: bool,
) -> None:
    """Upload a file or a directory as a new model.

    Only content the server lacks is sent. If the upload is cut off (network, server restart,
    Ctrl-C), run the same command again: it resumes where it stopped.

    \b
    Examples:
      modeldepot models upload ./squeezenet1.1.onnx --name squeezenet --type ONNX --project pr… \\
          --summary '{"accuracy": 0.71, "loss": 1.2}' --notes "baseline" --tag cnn --tag small
      modeldepot models upload ./checkpoints/ --name resnet --project pr…
    """
    summary_, metadata_ = _json_object(summary, "--summary"), _json_object(metadata, "--metadata")
    with _resumes_when_interrupted("upload"):
        model = make_client(parallel).upload(
            path,
            project=project,
            name=name,
            type=type_,
            summary=summary_,
            notes=notes,
            tags=list(tags),
            metadata=metadata_,
            dataset_ref=dataset_ref,
            progress=Bar(enabled=None if not as_json else False),
        )
    if as_json:
        emit_json(model)
    else:
        click.echo(
            f"Uploaded {model.id}: {model.name} v{model.version} ({model.type}, "
            f"{model.file_count} file(s), {human_size(model.size)})"
        )


@group.command("list")
@project_option(help="Only this project (id or name).")
@click.option("--tag", help="Only models with this tag.")
@click.option("--name", help="Only models with exactly this name.")
@click.option("--type", "type_", type=TYPES, help="Only this type.")
@click.option("--state", default="ready", show_default=True, help="ready, uploading, failed or any.")
@click.option("--limit", default=50, show_default=True, help="Models per page.")
@click.option("--cursor", help="Continue from a previous page's next cursor.")
@click.option("--all", "all_", is_flag=True, help="Follow every page.")
@json_option
def list_(
    project: str | None,
    tag: str | None,
    name: str | None,
    type_: str | None,
    state: str,
    limit: int,
    cursor: str | None,
    all_: bool,
    as_json: bool,
) -> None:
    """List models, newest first.

    \b
    Example:
      modeldepot models list --project pr… --tag cnn --json
    """
    client = make_client()
    filters: dict[str, Any] = {"project": project, "tag": tag, "name": name, "type": type_, "state": state}
    if all_:
        items = list(client.iter_models(limit=limit, **filters))
        next_cursor = None
    else:
        page = client.list_models(limit=limit, cursor=cursor, **filters)
        items, next_cursor = list(page.items), page.next_cursor
    if as_json:
        emit_json({"items": items, "next_cursor": next_cursor})
        return
    # Every row is in the state asked for, except with --state any: then each says its own.
    with_state = state == "any"
    table(
        [
            "ID",
            "Name",
            "Ver",
            "Type",
            *(["State"] if with_state else []),
            "Project",
            "Summary",
            "Tags",
            "Size",
            "Created",
        ],
        [
            (
                m.id,
                m.name,
                m.version,
                m.type,
                *([m.state] if with_state else []),
                m.project_id,
                _short_summary(m),
                ", ".join(m.tags),
                human_size(m.size),
                f"{m.created_at:%Y-%m-%d %H:%M}",
            )
            for m in items
        ],
    )
    if next_cursor:
        click.echo(f"More: --cursor {next_cursor} (or --all)")


def _workload_line(client: Client, workload_id: str | None) -> str:
    """Which run made the model: ``wl… succeeded, commit 3f2a9c1e0b-dirty, `python train.py```."""
    if workload_id is None:
        return "none (uploaded)"
    w = client.get_workload(workload_id)
    commit = f", commit {commit_text(w)}" if w.git_commit else ""
    return f"{w.id} ({w.state}{commit}): {shlex.join(w.command)}"


def _short_summary(m: Model) -> str:
    return ", ".join(f"{k}={v}" for k, v in list(m.summary.items())[:3])


@group.command("show")
@click.argument("model_id")
@json_option
def show(model_id: str, as_json: bool) -> None:
    """Show every field of a model and its files."""
    client = make_client()
    m = client.get_model(model_id)
    if as_json:
        emit_json(m)
        return
    versions = client.list_models(project=m.project_id, name=m.name, limit=10).items
    fields(
        [
            ("ID", m.id),
            ("Name", f"{m.name} (version {m.version})"),
            ("Project", m.project_id),
            ("Type", m.type),
            ("State", m.state),
            ("Summary", json.dumps(m.summary) if m.summary else ""),
            ("Tags", ", ".join(m.tags)),
            ("Notes", m.notes),
            ("Metadata", json.dumps(m.metadata) if m.metadata else ""),
            ("Dataset", m.dataset_ref),
            ("Series", series_text(m.series)),
            ("Workload", _workload_line(client, m.workload_id)),
            ("Deployment", m.deployment_state or "none"),
            ("Created", f"{m.created_at:%Y-%m-%d %H:%M:%S} UTC by {m.created_by}"),
            ("Storage", m.storage_location),
            ("Size", f"{human_size(m.size)} in {m.file_count} file(s)"),
            (
                "Versions",
                ", ".join(f"v{v.version} {v.id}" + (" (this)" if v.id == m.id else "") for v in versions),
            ),
        ]
    )
    if m.files:
        table(
            ["Path", "Size", "sha256"], [(f.path, human_size(f.size), f.sha256[:16] + "…") for f in m.files]
        )


@group.command("download")
@click.argument("model_id")
# DEST stays a str: click would make "" the current directory (Path("") is "."); the SDK refuses it.
@click.argument("dest", type=click.Path(), default=".")
@click.option(
    "--parallel", default=4, show_default=True, type=click.IntRange(1, 64), help="Transfers at once."
)
@json_option
def download(model_id: str, dest: str, parallel: int, as_json: bool) -> None:
    """Download a model's files into DEST (hashes checked; existing good files kept).

    \b
    Example:
      modeldepot models download mo… ./out
    """
    with _resumes_when_interrupted("download"):
        written = make_client(parallel).download(
            model_id, dest, progress=Bar(enabled=None if not as_json else False)
        )
    if as_json:
        emit_json({"files": [str(p) for p in written]})
    else:
        click.echo(f"Downloaded {len(written)} file(s) to {dest}")


@group.command("archive")
@click.argument("model_id")
@click.argument("dest", type=click.Path(allow_dash=True))
@click.option("--format", "format_", type=click.Choice(["zip", "tar"]), default="zip", show_default=True)
@json_option
def archive(model_id: str, dest: str, format_: str, as_json: bool) -> None:
    """Save a whole model as one zip or tar file.

    DEST is the file to write (its folder is made if missing). DEST `-` writes the archive to
    standard output, e.g. to pipe it into tar; it is refused when standard output is a terminal. If
    that download fails part way, what was written is incomplete: the command exits with an error
    and the reader must discard it.

    \b
    Examples:
      modeldepot models archive mo… resnet.tar --format tar
      modeldepot models archive mo… - --format tar | tar xf - -C ./resnet
    """
    client = make_client()
    bar = Bar(enabled=None if not as_json else False)  # on stderr
    if dest == "-":
        if as_json:
            raise click.UsageError("--json cannot be used with DEST '-': the archive is what goes to stdout.")
        stdout: BinaryIO = sys.stdout.buffer
        if stdout.isatty():
            raise InvalidInput(
                "Refusing to write an archive to a terminal",
                hint="Redirect standard output (`> model.zip` or `| tar xf -`), or give a file name.",
            )
        client.download_archive(model_id, stdout, format=format_, progress=bar)
        return
    path = client.download_archive(model_id, dest, format=format_, progress=bar)
    emit_json({"archive": str(path)}) if as_json else click.echo(f"Saved {path}")


@group.command("rename")
@click.argument("model_id")
@click.argument("name")
@json_option
def rename(model_id: str, name: str, as_json: bool) -> None:
    """Give a model a new name (it becomes the next version of that name)."""
    m = make_client().rename_model(model_id, name)
    if as_json:
        emit_json(m)
    else:
        click.echo(f"Renamed {m.id} to {m.name} (version {m.version})")


@group.command("update")
@click.argument("model_id")
@click.option("--notes", help="New notes.")
@click.option("--summary", help="New summary metrics (JSON object).")
@click.option("--metadata", help="New metadata (JSON object).")
@click.option("--dataset-ref", help="New dataset reference.")
@json_option
def update(
    model_id: str,
    notes: str | None,
    summary: str | None,
    metadata: str | None,
    dataset_ref: str | None,
    as_json: bool,
) -> None:
    """Change a model's metadata. Its files never change.

    \b
    Example:
      modeldepot models update mo… --notes "retrained" --summary '{"accuracy": 0.74}'
    """
    if all(v is None for v in (notes, summary, metadata, dataset_ref)):
        raise click.UsageError("Nothing to change: give --notes, --summary, --metadata or --dataset-ref.")
    m = make_client().update_model(
        model_id,
        notes=notes,
        summary=_json_object(summary, "--summary"),
        metadata=_json_object(metadata, "--metadata"),
        dataset_ref=dataset_ref,
    )
    if as_json:
        emit_json(m)
    else:
        click.echo(f"Updated {m.id}")


@group.group("tags")
def tags() -> None:
    """Add or remove tags."""


@tags.command("add")
@click.argument("model_id")
@click.argument("tag", nargs=-1, required=True)
@json_option
def tags_add(model_id: str, tag: tuple[str, ...], as_json: bool) -> None:
    """Add tags to a model."""
    m = make_client().add_tags(model_id, *tag)
    emit_json(m) if as_json else click.echo(f"Tags of {m.id}: {', '.join(m.tags) or '-'}")


@tags.command("remove")
@click.argument("model_id")
@click.argument("tag", nargs=-1, required=True)
@json_option
def tags_remove(model_id: str, tag: tuple[str, ...], as_json: bool) -> None:
    """Remove tags from a model."""
    m = make_client().remove_tags(model_id, *tag)
    emit_json(m) if as_json else click.echo(f"Tags of {m.id}: {', '.join(m.tags) or '-'}")


@group.command("delete")
@click.argument("model_id")
@json_option
def delete(model_id: str, as_json: bool) -> None:
    """Delete a model. Its files are no longer listed; shared content stays for other models."""
    make_client().delete_model(model_id)
    emit_json({"deleted": model_id}) if as_json else click.echo(f"Deleted model {model_id}")
