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
@json_option
def fsck(as_json: bool) -> None:
    """Verify every stored blob against its sha256 (exit code 8 if any is missing or corrupt)."""
    report = make_client().fsck()
    if as_json:
        emit_json(report)
    else:
        fields(
            [
                ("Checked", f"{report['blobs_checked']} blob(s), {human_size(report['bytes_checked'])}"),
                ("Missing", ", ".join(report["missing"]) or "none"),
                ("Corrupt", ", ".join(report["corrupt"]) or "none"),
                ("Not indexed", len(report["unindexed"])),
            ]
        )
    if not report["ok"]:
        sys.exit(8)
