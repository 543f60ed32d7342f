"""The ``modeldepot`` command: groups, global options, and the one place errors become exit codes."""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any, NoReturn

import click
from rich.markup import escape

from .._version import __version__
from ..errors import InvalidInput, ModeldepotError, StorageFull
from . import admin, aliases, keys, models, projects, serve, workloads
from .context import make_client, save_login, settings
from .output import JSON_ERRORS, emit_json, err_console, fields, json_option
from .run import run

EPILOG = """\b
Start here:
  modeldepot serve                                   # in one terminal
  modeldepot login --url http://127.0.0.1:8750 --api-key md_…
  modeldepot projects create vision
  modeldepot models upload ./model.onnx --name squeezenet --project pr…
  modeldepot models list --project pr…
  modeldepot run --project pr… --name resnet -- python train.py   # a model from a run

Exit codes: 0 ok, 1 unexpected, 2 usage, 3 invalid input (also a local file that cannot
be read or written), 4 not found, 5 conflict, 6 unauthenticated, 7 permission denied,
8 integrity, 9 storage full (the server's, or the local disk), 10 cannot reach server,
130 interrupted (Ctrl-C; an upload or download run again resumes).
"""

# What to do about a local file-system error, by errno; {path} is the file, {folder} its directory.
LOCAL_HINTS = {
    errno.ENOSPC: (
        "Free space on the disk of {folder}, then run the command again"
        " (`models download` resumes where it stopped)."
    ),
    errno.EDQUOT: "Your disk quota for {folder} is used up: free space, then run the command again.",
    errno.EACCES: "Check the permissions of {path} and of the directories above it.",
    errno.EPERM: "Check the permissions of {path} and of the directories above it.",
    errno.EROFS: "{folder} is on a read-only file system: choose another place.",
    errno.ENOTDIR: "A file is where a directory is needed: give a directory, or move the file away.",
    errno.EISDIR: "A directory is where a file should go: move it away, or choose another place.",
    errno.EEXIST: "A file is where a directory is needed: move it away, or choose another place.",
    errno.ENOENT: "Check the path.",
    errno.EFBIG: "The file is larger than this file system or your file size limit (`ulimit -f`) allows.",
}


def local_error(exc: OSError) -> ModeldepotError | None:
    """A local file-system error (an OSError that names its file: the SDK raises those as they are)
    as the error the CLI reports: a full disk is storage full (exit 9), anything else invalid
    input (exit 3). None for an OSError that names no file, which is not expected here."""
    if exc.filename is None:
        return None
    path = os.fsdecode(exc.filename)
    what = exc.strerror or str(exc)
    if exc.filename2 is not None:
        detail = f"Cannot move {path} to {os.fsdecode(exc.filename2)}: {what}"
    else:
        detail = f"{path}: {what}"
    hint = LOCAL_HINTS.get(exc.errno or 0)
    if hint is not None:
        hint = hint.format(path=path, folder=os.path.dirname(os.path.abspath(path)))
    cls = StorageFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else InvalidInput
    return cls(detail, hint=hint)


def _report(exc: ModeldepotError) -> NoReturn:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(JSON_ERRORS):
        # For scripts: the problem document the server sends, and the exit code, as one line.
        click.echo(json.dumps({**exc.to_problem(), "exit_code": exc.exit_code}), err=True)
        sys.exit(exc.exit_code)
    # Escaped: a detail such as "[step, value]" is text, not rich markup.
    err_console.print(f"[bold red]Error:[/] {escape(exc.detail)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]Hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """Turns every modeldepot error, and every local file-system error, into one readable line and
    its documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModeldepotError as exc:
            _report(exc)
        except OSError as exc:
            error = local_error(exc)
            if error is None:
                raise
            _report(error)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modeldepot")
@click.option("--url", envvar="MODELDEPOT_URL", help="Server URL (default: from `modeldepot login`).")
@click.option("--api-key", envvar="MODELDEPOT_API_KEY", help="API key (default: from `modeldepot login`).")
def cli(url: str | None, api_key: str | None) -> None:
    """modeldepot: a self-hosted model repository for machine-learning teams."""


@cli.command()
@click.option(
    "--url",
    "server_url",
    required=True,
    help="The server's base URL, with http:// or https://, e.g. http://127.0.0.1:8750",
)
@click.option("--api-key", "key", prompt=True, hide_input=True, help="Your API key (prompted when left out).")
@json_option
def login(server_url: str, key: str, as_json: bool) -> None:
    """Check a server URL and API key, and store them (mode 0600) for later commands.

    \b
    Example:
      modeldepot login --url http://127.0.0.1:8750 --api-key md_…
    """
    from ..client import Client

    with Client(server_url, key.strip()) as client:  # refuses a URL without http:// or https://
        me = client.whoami()
        server_url = client.url  # as the SDK uses it: no trailing / or /api/v1
    path = save_login(server_url, key.strip())
    if as_json:
        emit_json({"config_file": str(path), **me})
    else:
        who = "global admin" if me["is_admin"] else f"{len(me['roles'])} project role(s)"
        click.echo(f"Logged in to {server_url} as {me['user']} ({who}). Saved to {path}")


@cli.command()
def logout() -> None:
    """Forget the stored server URL and API key."""
    path = settings().config_file
    path.unlink(missing_ok=True)
    click.echo(f"Removed {path}")


@cli.command()
@json_option
def whoami(as_json: bool) -> None:
    """Show which key you are using and its roles."""
    me = make_client().whoami()
    if as_json:
        emit_json(me)
        return
    roles = ", ".join(f"{p}: {r}" for p, r in sorted(me["roles"].items())) or "-"
    fields([("Key", me["key_id"]), ("User", me["user"]), ("Admin", me["is_admin"]), ("Roles", roles)])


cli.add_command(serve.serve)
cli.add_command(projects.group)
cli.add_command(models.group)
cli.add_command(run)
cli.add_command(workloads.group)
cli.add_command(aliases.group)
cli.add_command(keys.group)
cli.add_command(admin.gc)
cli.add_command(admin.fsck)


def main() -> None:
    cli(prog_name="modeldepot")
