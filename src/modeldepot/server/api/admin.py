"""/api/v1/admin: storage maintenance, for global admin keys."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["admin"])


class GcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False
    grace_seconds: int | None = Field(None, ge=0, description="Override the server's grace period.")


@router.post("/admin/gc")
def collect_garbage(body: GcRequest, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Delete blobs no model or upload needs (untouched for the grace period) and expired uploads."""
    principal.require_admin()
    grace = None if body.grace_seconds is None else timedelta(seconds=body.grace_seconds)
    return dataclasses.asdict(services.maintenance.collect(dry_run=body.dry_run, grace=grace))


@router.post("/admin/fsck")
def check_storage(principal: PrincipalDep, services: ServicesDep) -> Any:
    """Re-hash every stored blob and report what is missing, corrupt or not indexed."""
    principal.require_admin()
    report = services.maintenance.fsck()
    return dataclasses.asdict(report) | {"ok": report.ok}
