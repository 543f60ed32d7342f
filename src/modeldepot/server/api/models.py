"""/api/v1/models: start an upload, send blobs, commit; list, show, change, download, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ...records import to_json
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["models"])


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
