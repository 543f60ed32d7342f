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


class FsckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repair: bool = Field(
        False,
        description="Forget missing and corrupt blobs (their index rows and damaged bytes), so that "
        "uploading that content again restores it for every model that names it.",
    )


@router.post("/admin/fsck")
def check_storage(principal: PrincipalDep, services: ServicesDep, body: FsckRequest | None = None) -> Any:
    """Re-hash every stored blob and report what is missing, corrupt or not indexed, and the model
    files that have the missing or corrupt content; with ``repair``, forget the damaged blobs."""
    principal.require_admin()
    report = services.maintenance.fsck(repair=body is not None and body.repair)
    return dataclasses.asdict(report) | {"ok": report.ok}
