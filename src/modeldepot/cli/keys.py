"""``modeldepot keys …``"""

from __future__ import annotations

import click

from .context import make_client, project_option
from .output import emit_json, json_option, table


@click.group("keys")
def group() -> None:
    """Create, list and revoke API keys."""


@group.command("create")
@project_option(help="Project the key gets a role in (id or name).")
@click.option("--role", type=click.Choice(["viewer", "editor", "admin"]), help="Its role there.")
@click.option("--admin", is_flag=True, help="A global admin key instead (needs a global admin key).")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--user", help="Who the key is for (default: you).")
@json_option
def create(
    project: str | None, role: str | None, admin: bool, name: str, user: str | None, as_json: bool
) -> None:
    """Create an API key. The secret is printed once and never again.

    \b
    Example:
      modeldepot keys create --project pr… --role viewer --name dashboards
    """
    new = make_client().create_key(project=project, role=role, admin=admin, name=name, user=user)
    if as_json:
        emit_json(new)
        return
    click.echo(f"Created key {new.key.id}. Its secret, shown only now:")
    click.echo(new.secret)


@group.command("list")
@project_option(help="Only keys with a role in this project (id or name).")
@json_option
def list_(project: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    items = make_client().list_keys(project=project)
    if as_json:
        emit_json(items)
        return
    table(
        ["ID", "Name", "User", "Admin", "Roles", "Created", "Revoked"],
        [
            (
                k.id,
                k.name,
                k.user,
                "yes" if k.is_admin else "",
                ", ".join(f"{p}: {r}" for p, r in sorted(k.roles.items())),
                f"{k.created_at:%Y-%m-%d %H:%M}",
                "yes" if k.revoked else "",
            )
            for k in items
        ],
    )


@group.command("revoke")
@click.argument("key_id")
@json_option
def revoke(key_id: str, as_json: bool) -> None:
    """Revoke a key: it stops working at once."""
    key = make_client().revoke_key(key_id)
    emit_json(key) if as_json else click.echo(f"Revoked key {key_id}")
