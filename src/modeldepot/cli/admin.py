"""``modeldepot gc`` and ``modeldepot fsck``: storage maintenance (global admin key)."""

from __future__ import annotations

import sys

import click

from .context import make_client
from .output import emit_json, fields, human_size, json_option


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only report what would be reclaimed.")
@click.option(
    "--grace-seconds", type=int, help="Collect blobs untouched for this long (default: the server's)."
)
@json_option
def gc(dry_run: bool, grace_seconds: int | None, as_json: bool) -> None:
    """Delete stored content no model needs, and expired uploads.

    The server also does this on a schedule (MODELDEPOT_GC_INTERVAL_SECONDS).

    \b
    Example:
      modeldepot gc --dry-run
    """
    report = make_client().gc(dry_run=dry_run, grace_seconds=grace_seconds)
    if as_json:
        emit_json(report)
        return
    verb = "Would reclaim" if dry_run else "Reclaimed"
    click.echo(
        f"{verb} {human_size(report['bytes_reclaimed'])} in {report['blobs_deleted']} blob(s); "
        f"{report['uploads_expired']} expired upload(s), {report.get('orphan_stagings_removed', 0)} "
        f"orphaned staging area(s) and {report.get('temporary_files_removed', 0)} abandoned temporary "
        f"file(s) {'to remove' if dry_run else 'removed'}"
    )


@click.command("fsck")
@click.option(
    "--repair",
    is_flag=True,
    help="Forget missing and corrupt blobs, so that uploading the affected files again restores them.",
)
@json_option
def fsck(repair: bool, as_json: bool) -> None:
    """Verify every stored blob against its sha256 (exit code 8 if any is missing or corrupt).

    It lists the model files whose content is missing or corrupt. An upload of that content finds it
    "stored" and sends nothing, until `--repair` forgets the damaged blobs: then uploading the files
    again (as any model) restores them for every model that names them.

    \b
    Example:
      modeldepot fsck
      modeldepot fsck --repair
    """
    report = make_client().fsck(repair=repair)
    if as_json:
        emit_json(report)
    else:
        fields(
            [
                ("Checked", f"{report['blobs_checked']} blob(s), {human_size(report['bytes_checked'])}"),
                ("Missing", ", ".join(report["missing"]) or "none"),
                ("Corrupt", ", ".join(report["corrupt"]) or "none"),
                ("Not indexed", len(report["unindexed"])),
                *[("Affected", f"{a['model_id']} {a['path']}") for a in report.get("affected", [])],
            ]
        )
        if report.get("forgotten"):
            click.echo(
                f"Forgot {report['forgotten']} damaged blob(s): upload the affected files again "
                "(as any model) to restore them for every model that names them."
            )
        elif report["missing"] or report["corrupt"]:
            click.echo(
                "Run `modeldepot fsck --repair`, then upload the affected files again, to restore them."
            )
        elif not report["ok"]:
            click.echo(
                "The affected files have no stored content (a repair forgot it): upload them again "
                "(as any model) to restore them."
            )
    if not report["ok"]:
        sys.exit(8)
