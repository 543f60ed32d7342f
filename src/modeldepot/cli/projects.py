"""``modeldepot projects …``"""

from __future__ import annotations

import click

from .context import make_client
from .output import emit_json, fields, json_option, table


@click.group("projects")
def group() -> None:
    """Create, list, show, rename and delete projects."""


@group.command("create")
@click.argument("name")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for more).")
@json_option
def create(name: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Create a project and print its id.

    \b
    Example:
      modeldepot projects create vision --tag cv
    """
    project = make_client().create_project(name, tags=list(tags))
    if as_json:
        emit_json(project)
    else:
        click.echo(project.id)


@group.command("list")
@click.option("--tag", help="Only projects with this tag.")
@json_option
def list_(tag: str | None, as_json: bool) -> None:
    """List the projects your key can see."""
    projects = make_client().list_projects(tag=tag)
    if as_json:
        emit_json(projects)
        return
    table(
        ["ID", "Name", "Models", "Tags", "Created"],
        [
            (p.id, p.name, p.model_count, ", ".join(p.tags), f"{p.created_at:%Y-%m-%d %H:%M}")
            for p in projects
        ],
    )


@group.command("show")
@click.argument("project_id")
@json_option
def show(project_id: str, as_json: bool) -> None:
    """Show one project."""
    p = make_client().get_project(project_id)
    if as_json:
        emit_json(p)
        return
    fields(
        [
            ("ID", p.id),
            ("Name", p.name),
            ("Models", p.model_count),
            ("Tags", ", ".join(p.tags)),
            ("Created", f"{p.created_at:%Y-%m-%d %H:%M:%S} UTC by {p.created_by}"),
        ]
    )


@group.command("rename")
@click.argument("project_id")
@click.argument("name")
@json_option
def rename(project_id: str, name: str, as_json: bool) -> None:
    """Rename a project."""
    p = make_client().rename_project(project_id, name)
    if as_json:
        emit_json(p)
    else:
        click.echo(f"Renamed {p.id} to {p.name!r}")


@group.command("delete")
@click.argument("project_id")
@click.option("--force", is_flag=True, help="Also delete the models it still holds.")
@json_option
def delete(project_id: str, force: bool, as_json: bool) -> None:
    """Delete a project (with --force, also when it still has models)."""
    make_client().delete_project(project_id, force=force)
    emit_json({"deleted": project_id}) if as_json else click.echo(f"Deleted project {project_id}")
