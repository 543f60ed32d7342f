"""/api/v1/projects/{project}/aliases"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict

from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["aliases"])


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str


@router.put("/projects/{project_id}/aliases/{model_name}/{alias}")
def set_alias(
    project_id: str,
    model_name: str,
    alias: str,
    body: AliasSet,
    principal: PrincipalDep,
    services: ServicesDep,
) -> Any:
    return to_json(services.aliases.set(principal, project_id, model_name, alias, body.model_id))


@router.get("/projects/{project_id}/aliases")
def list_aliases(project_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return {"items": to_json(services.aliases.list_aliases(principal, project_id))}


@router.get("/projects/{project_id}/aliases/{model_name}/{alias}")
def get_alias(
    project_id: str, model_name: str, alias: str, principal: PrincipalDep, services: ServicesDep
) -> Any:
    return to_json(services.aliases.get(principal, project_id, model_name, alias))


@router.delete("/projects/{project_id}/aliases/{model_name}/{alias}", status_code=204)
def delete_alias(
    project_id: str, model_name: str, alias: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    services.aliases.delete(principal, project_id, model_name, alias)
    return Response(status_code=204)
