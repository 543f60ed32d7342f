"""/api/v1/models: start an upload, send blobs, commit; list, show, change, download, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...errors import IntegrityError
from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["models"])

_WRITE_BATCH = 4 * 1024 * 1024


class ManifestEntry(BaseModel):
    path: str
    size: int
    sha256: str


class ModelCreate(BaseModel):
    name: str
    files: list[ManifestEntry]
    type: str | None = None
    summary: dict[str, Any] | None = None
    notes: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None
    dataset_ref: str | None = None


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not silently ignored

    name: str | None = None
    notes: str | None = None
    summary: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    dataset_ref: str | None = None
    tags: list[str] | None = None
    add_tags: list[str] | None = None
    remove_tags: list[str] | None = None


def _blob_url(request: Request, model_id: str, sha256: str) -> str:
    return str(request.url_for("put_blob", model_id=model_id, sha256=sha256))


@router.post("/projects/{project_id}/models", status_code=201)
def start_upload(
    project_id: str, body: ModelCreate, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """Create a model from its manifest. The answer lists the blobs to PUT before committing."""
    plan = services.models.start_upload(
        principal,
        project_id,
        name=body.name,
        files=[f.model_dump() for f in body.files],
        type=body.type,
        summary=body.summary,
        notes=body.notes,
        tags=body.tags,
        metadata=body.metadata,
        dataset_ref=body.dataset_ref,
    )
    return {
        "model": to_json(plan.model),
        "missing": [
            {"sha256": f.sha256, "size": f.size, "url": _blob_url(request, plan.model.id, f.sha256)}
            for f in plan.missing
        ],
    }


@router.put("/models/{model_id}/blobs/{sha256}", status_code=204)
async def put_blob(
    model_id: str, sha256: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Stream one blob's bytes; they are hashed on the way and kept only if size and sha256 match."""
    writer, size = await run_in_threadpool(services.models.open_blob, principal, model_id, sha256)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != size:
        writer.abort()
        raise IntegrityError(f"Content-Length is {declared}, but the blob {sha256} has {size} bytes")
    try:
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _WRITE_BATCH:
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            await run_in_threadpool(writer.write, b"".join(pending))
        await run_in_threadpool(writer.commit, sha256, size)
    except BaseException:
        writer.abort()
        raise
    await run_in_threadpool(services.models.blob_received, model_id, sha256)
    return Response(status_code=204)


@router.post("/models/{model_id}/commit")
def commit(model_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Check every blob and mark the model ready."""
    return to_json(services.models.commit(principal, model_id))


@router.get("/models")
def list_models(
    principal: PrincipalDep,
    services: ServicesDep,
    project: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    type: str | None = None,
    state: str = "ready",
    cursor: str | None = None,
    limit: int = 50,
) -> Any:
    """Newest first, keyset-paginated: pass ``next_cursor`` back as ``cursor``. ``state=any`` lists all."""
    page = services.models.list_models(
        principal,
        project_id=project,
        tag=tag,
        name=name,
        type=type,
        state=None if state == "any" else state,
        cursor=cursor,
        limit=limit,
    )
    return {"items": to_json(page.items), "next_cursor": page.next_cursor}


@router.get("/models/{model_id}")
def get_model(model_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    return to_json(services.models.get(principal, model_id))


@router.patch("/models/{model_id}")
def update_model(model_id: str, body: ModelUpdate, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Change metadata: name (rename), notes, summary, metadata, dataset_ref, tags. Files are immutable."""
    changes = body.model_dump(exclude_unset=True)
    return to_json(services.models.update(principal, model_id, changes))


@router.delete("/models/{model_id}", status_code=204)
def delete_model(model_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    services.models.delete(principal, model_id)
    return Response(status_code=204)


@router.get("/models/{model_id}/files")
def list_files(model_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    files = services.models.files(principal, model_id)
    base = str(request.url_for("list_files", model_id=model_id))
    return {"items": [to_json(f) | {"url": f"{base}/{_quote(f.path)}"} for f in files]}


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


@router.get("/models/{model_id}/files/{path:path}")
def download_file(model_id: str, path: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """The bytes of one file, as an attachment; Range requests and the sha256 ETag are honoured."""
    found = services.models.file(principal, model_id, path)
    headers = {"X-Content-Type-Options": "nosniff", "X-Checksum-Sha256": found.sha256}
    filename = found.path.rsplit("/", 1)[-1]
    local = services.models.blobs.local_path(found.sha256)
    if local is not None:
        response: Response = FileResponse(
            local,
            media_type="application/octet-stream",
            filename=filename,
            headers=headers,
            content_disposition_type="attachment",
        )
        response.headers["ETag"] = f'"{found.sha256}"'
        return response
    return StreamingResponse(
        services.models.blobs.read(found.sha256),
        media_type="application/octet-stream",
        headers=headers | {"ETag": f'"{found.sha256}"', "Content-Length": str(found.size)},
    )
