"""/api/v1/keys"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str | None = None
    role: str | None = None
    admin: bool = False
    name: str = ""
    user: str | None = None


@router.post("/keys", status_code=201)
def create_key(body: KeyCreate, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Create a key; the secret is in this answer only."""
    new = services.auth.create_key(
        principal, project_id=body.project, role=body.role, admin=body.admin, name=body.name, user=body.user
    )
    return to_json(new)


@router.get("/keys")
def list_keys(principal: PrincipalDep, services: ServicesDep, project: str | None = None) -> Any:
    return {"items": to_json(services.auth.list_keys(principal, project))}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return to_json(services.auth.revoke(principal, key_id))
