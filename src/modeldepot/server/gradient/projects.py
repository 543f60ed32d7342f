"""Gradient's project, tag and team routes (E8-E13 of the wire contract) over the services."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Query

from ...errors import InvalidInput
from ..deps import PrincipalDep, ServicesDep
from .common import JsonBody, project_json
from .routing import route

# The two kinds of entity the CLI tags, by the names it sends.
_ENTITIES = ("mlModel", "project")
_PROJECT_ORDERS = {"dtCreated": "created_at", "name": "name"}


def _entity(value: Any) -> str:
    if value not in _ENTITIES:
        raise InvalidInput(f"Entity {value!r} has no tags here", hint=f"Use {' or '.join(_ENTITIES)}.")
    return str(value)


@route("GET", "/entityTags/getTags")
def get_tags(
    principal: PrincipalDep,
    services: ServicesDep,
    entity: str | None = None,
    entityIds: Annotated[list[str] | None, Query()] = None,  # the CLI's parameter name
) -> Any:
    """E8. ``{"<id>": [{"tag": {"name": …}}, …]}`` for the ids that have tags; an unknown id is a 404."""
    kind = _entity(entity)
    out: dict[str, list[dict[str, Any]]] = {}
    for entity_id in entityIds or []:
        if kind == "mlModel":
            tags = services.models.get(principal, entity_id, with_files=False).tags
        else:
            tags = services.projects.get(principal, entity_id).tags
        if tags:
            out[entity_id] = [{"entity": kind, "entityId": entity_id, "tag": {"name": t}} for t in tags]
    return out


@route("PUT", "/entityTags/updateTags")
def update_tags(body: JsonBody, principal: PrincipalDep, services: ServicesDep) -> Any:
    """E9. Replace the whole tag set (the CLI computes it from E8); ``[]`` clears it."""
    kind = _entity(body.get("entity"))
    entity_id, tags = body.get("entityId"), body.get("tags")
    if not isinstance(entity_id, str) or not entity_id:
        raise InvalidInput("entityId must name the model or project")
    if not isinstance(tags, list):
        raise InvalidInput("tags must be a list of strings", hint='e.g. {"tags": ["prod", "v2"]}')
    if kind == "mlModel":
        new = services.models.update(principal, entity_id, {"tags": tags}).tags
    else:
        new = services.projects.set_tags(principal, entity_id, tags).tags
    return {entity_id: [{"entity": kind, "entityId": entity_id, "tag": {"name": t}} for t in new]}


@route("POST", "/projects/")
def create_project(body: JsonBody, principal: PrincipalDep, services: ServicesDep) -> Any:
    """E10. The answer's ``handle`` is the project id."""
    # The service checks every field (a missing or empty name included) and says what is wrong.
    name: Any = body.get("name")
    project = services.projects.create(
        principal, name, repo_name=body.get("repoName"), repo_url=body.get("repoUrl")
    )
    return project_json(project)


def _project_filter(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidInput(
            "filter is not valid JSON", hint='e.g. filter={"where":{"handle":"pr…"}}'
        ) from None
    if not isinstance(value, dict):
        raise InvalidInput("filter must be a JSON object")
    return value


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer")
    return value


@route("GET", "/projects/")
def list_projects(
    principal: PrincipalDep,
    services: ServicesDep,
    filter: str | None = None,
    tagFilter: Annotated[list[str] | None, Query()] = None,
) -> Any:
    """E11. ``projects list`` (tags match any; offset, limit, order) and ``projects details`` (handle)."""
    spec = _project_filter(filter)
    where = spec.get("where") or {}
    if not isinstance(where, dict):
        raise InvalidInput("filter.where must be an object")
    unknown = sorted(set(where) - {"handle", "id", "name", "dtDeleted"})
    if unknown:
        raise InvalidInput(
            f"Filtering projects on {unknown[0]!r} is not supported", hint="Use handle or name."
        )
    handle = where.get("handle", where.get("id"))
    if handle is not None:
        # Details: an unknown id is a 404 with the service's message.
        projects = [services.projects.get(principal, str(handle))]
    else:
        projects = services.projects.list_projects(principal)
    if "name" in where:
        projects = [p for p in projects if p.name == where["name"]]
    if tagFilter:
        wanted = set(tagFilter)
        projects = [p for p in projects if wanted & set(p.tags)]
    order = spec.get("order") or "dtCreated desc"
    field, _, direction = str(order).partition(" ")
    if field not in _PROJECT_ORDERS or direction.lower() not in ("", "asc", "desc"):
        raise InvalidInput(f"Cannot order projects by {order!r}", hint="Use 'dtCreated desc' or 'name asc'.")
    attr = _PROJECT_ORDERS[field]
    projects.sort(key=lambda p: (getattr(p, attr), p.id), reverse=direction.lower() != "asc")
    offset, limit = _int(spec.get("offset"), "offset"), _int(spec.get("limit"), "limit")
    projects = projects[offset : offset + limit if limit else None]
    return {"data": [project_json(p) for p in projects], "total": len(projects)}


@route("POST", "/projects/{project_id}/deleteProject")
def delete_project(project_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    """E12. A project that still has models is refused (409): delete its models first."""
    services.projects.delete(principal, project_id)
    return {}


@route("GET", "/teams/namespace")
def team_namespace(principal: PrincipalDep) -> Any:
    """E13. A JSON string: the CLI only prints it in a console URL. Here: the key's user."""
    return principal.user
