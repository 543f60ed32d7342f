"""``modeldepot aliases …``"""

from __future__ import annotations

import click

from .context import make_client, project_option
from .output import emit_json, json_option, table


@click.group("aliases")
def group() -> None:
    """Named pointers to a model version, e.g. production → mo…."""


@group.command("set")
@click.argument("model_name")
@click.argument("alias")
@click.argument("model_id")
@project_option(required=True)
@json_option
def set_(model_name: str, alias: str, model_id: str, project: str, as_json: bool) -> None:
    """Point ALIAS of MODEL_NAME at MODEL_ID (moving it if it exists).

    \b
    Example:
      modeldepot aliases set resnet production mo… --project pr…
    """
    a = make_client().set_alias(project, model_name, alias, model_id)
    emit_json(a) if as_json else click.echo(f"{a.model_name}@{a.alias} -> {a.model_id}")


@group.command("list")
@project_option(required=True)
@json_option
def list_(project: str, as_json: bool) -> None:
    """List a project's aliases."""
    items = make_client().list_aliases(project)
    if as_json:
        emit_json(items)
        return
    table(
        ["Model", "Alias", "Model ID", "Updated", "By"],
        [(a.model_name, a.alias, a.model_id, f"{a.updated_at:%Y-%m-%d %H:%M}", a.updated_by) for a in items],
    )


@group.command("delete")
@click.argument("model_name")
@click.argument("alias")
@project_option(required=True)
@json_option
def delete(model_name: str, alias: str, project: str, as_json: bool) -> None:
    """Delete an alias."""
    make_client().delete_alias(project, model_name, alias)
    if as_json:
        emit_json({"deleted": f"{model_name}@{alias}"})
    else:
        click.echo(f"Deleted alias {model_name}@{alias}")
