"""/api/v1/projects"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["projects"])


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    tags: list[str] = Field(default_factory=list)
    repo_name: str | None = None
    repo_url: str | None = None


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    tags: list[str] | None = None


@router.post("/projects", status_code=201)
def create_project(body: ProjectCreate, principal: PrincipalDep, services: ServicesDep) -> Any:
    return to_json(
        services.projects.create(
            principal, body.name, tags=body.tags, repo_name=body.repo_name, repo_url=body.repo_url
        )
    )


@router.get("/projects")
def list_projects(principal: PrincipalDep, services: ServicesDep, tag: str | None = None) -> Any:
    return {"items": to_json(services.projects.list_projects(principal, tag=tag))}


@router.get("/projects/{project_id}")
def get_project(project_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return to_json(services.projects.get(principal, project_id))


@router.patch("/projects/{project_id}")
def update_project(
    project_id: str, body: ProjectUpdate, principal: PrincipalDep, services: ServicesDep
) -> Any:
    project = services.projects.get(principal, project_id)
    if body.name is not None:
        project = services.projects.rename(principal, project_id, body.name)
    if body.tags is not None:
        project = services.projects.set_tags(principal, project_id, body.tags)
    return to_json(project)


@router.delete("/projects/{project_id}", status_code=204)
def delete_project(
    project_id: str, principal: PrincipalDep, services: ServicesDep, force: bool = False
) -> Response:
    services.projects.delete(principal, project_id, force=force)
    return Response(status_code=204)
