"""/api/v1 workloads: record a run that makes a model, report how it ended, list, show, read its log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["workloads"])


class WorkloadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not silently ignored

    name: str = Field(description="The name of the model the run will make.")
    command: list[str] = Field(description="The program and its arguments.")
    working_dir: str | None = None
    host: str | None = None
    user: str | None = Field(None, description="The operating-system user who runs it.")
    git_commit: str | None = None
    git_branch: str | None = None
    git_dirty: bool | None = None
    env: dict[str, str] | None = Field(None, description="Only the variables the user chose to keep.")
    dataset_ref: str | None = None
    type: str | None = Field(None, description="Checked now; the model is uploaded with it later.")
    tags: list[str] | None = Field(None, description="Checked now; the model is uploaded with them later.")
    notes: str | None = Field(None, description="Checked now; the model is uploaded with them later.")
    metadata: dict[str, Any] | None = Field(None, description="Checked now; the model is uploaded with it.")


class WorkloadUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: str | None = Field(None, description="uploading, succeeded, failed or interrupted.")
    exit_code: int | None = None
    log: str | None = Field(None, description="The captured output (at most 1 MiB characters).")
    log_bytes: int | None = Field(None, description="How many bytes of output there were in all.")
    summary: dict[str, Any] | None = None
    series: dict[str, Any] | None = None
    error: str | None = None
    model_id: str | None = Field(None, description="With state succeeded: the model the run uploaded.")


@router.post("/projects/{project_id}/workloads", status_code=201)
def start_workload(
    project_id: str, body: WorkloadCreate, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """Record a workload that starts now (state ``running``); the model fields are checked already."""
    return to_json(services.workloads.start(principal, project_id, **body.model_dump()))


@router.get("/workloads")
def list_workloads(
    principal: PrincipalDep,
    services: ServicesDep,
    project: str | None = None,
    commit: str | None = None,
    state: str | None = None,
    name: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Any:
    """Newest first, keyset-paginated. ``commit`` (a prefix of 4+ hex digits) answers which runs, and
    so which models (``model_id``), a commit produced."""
    page = services.workloads.list_workloads(
        principal, project_id=project, commit=commit, state=state, name=name, cursor=cursor, limit=limit
    )
    return {"items": to_json(page.items), "next_cursor": page.next_cursor}


@router.get("/workloads/{workload_id}")
def get_workload(workload_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return to_json(services.workloads.get(principal, workload_id))


@router.get("/workloads/{workload_id}/log", response_class=PlainTextResponse)
def get_log(workload_id: str, principal: PrincipalDep, services: ServicesDep) -> PlainTextResponse:
    """The captured output as text: its first 64 KiB and last 448 KiB when it was longer (a marker
    line says how much was left out; ``log_bytes`` of the workload is the whole length)."""
    return PlainTextResponse(
        services.workloads.log(principal, workload_id), headers={"X-Content-Type-Options": "nosniff"}
    )


@router.patch("/workloads/{workload_id}")
def update_workload(
    workload_id: str, body: WorkloadUpdate, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """Report how the command ended (``uploading``, ``failed``, ``interrupted``, with log and metrics),
    or claim the uploaded model (``succeeded`` with ``model_id``). A finished workload does not change."""
    return to_json(services.workloads.update(principal, workload_id, **body.model_dump(exclude_unset=True)))
