"""/api/v1/models: start an upload, send blobs, commit; list, show, change, download, delete."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ...errors import Conflict, InvalidInput, NotFound
from ...records import to_json
from ...services.auth import Principal
from ...services.container import Services
from ..archive import stream_tar, stream_zip
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["models"])

PRESIGN_SECONDS = 3600


class BlobFileResponse(FileResponse):
    """Starlette's FileResponse (Range, HEAD, Last-Modified), sent in 1 MiB reads instead of 64 KiB:
    each read is a hop to a worker thread, so fewer of them leave the event loop free for more bytes."""

    chunk_size = 1024 * 1024


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
    """Every file with its size, sha256 and the URL to GET it: presigned (to the object store, or to
    the data plane for large local files), or on this server."""
    files = services.models.files(principal, model_id)
    base = str(request.url_for("list_files", model_id=model_id))
    blobs = services.models.blobs
    items = []
    for f in files:
        name = f.path.rsplit("/", 1)[-1]
        presigned = (
            blobs.presign_get(f.sha256, PRESIGN_SECONDS, name, f.size)
            if f.size >= blobs.presign_min_size
            else None
        )
        items.append(to_json(f) | {"url": presigned or f"{base}/{quote(f.path, safe='/')}"})
    return {"items": items}


@router.get("/models/{model_id}/files/{path:path}")
def download_file(
    model_id: str, path: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """The bytes of one file, as an attachment; Range requests and the sha256 ETag are honoured.

    With an object store behind the server, the answer is a redirect to a presigned URL there.
    """
    found = services.models.file(principal, model_id, path)
    etag = f'"{found.sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"X-Content-Type-Options": "nosniff", "X-Checksum-Sha256": found.sha256}
    filename = found.path.rsplit("/", 1)[-1]
    blobs = services.models.blobs
    presigned = (
        blobs.presign_get(found.sha256, PRESIGN_SECONDS, filename, found.size)
        if found.size >= blobs.presign_min_size
        else None
    )
    if presigned is not None:
        return RedirectResponse(presigned, status_code=307, headers={"ETag": etag})
    local = services.models.blobs.local_path(found.sha256)
    if local is not None:
        response: Response = BlobFileResponse(
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


class ArchiveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = "tar"
    paths: list[str] | None = None


@router.post("/models/{model_id}/archive")
def download_some(
    model_id: str, body: ArchiveRequest, principal: PrincipalDep, services: ServicesDep
) -> StreamingResponse:
    """Some (``paths``) or all files of a ready model as one stream: many small files in one request."""
    return _archive(services, principal, model_id, body.format, body.paths)


@router.get("/models/{model_id}/archive")
def download_archive(
    model_id: str, principal: PrincipalDep, services: ServicesDep, format: str = "zip"
) -> StreamingResponse:
    """Every file of a ready model as one ``zip`` (stored, zip64) or ``tar`` stream."""
    return _archive(services, principal, model_id, format, None)


def _archive(
    services: Services, principal: Principal, model_id: str, format: str, paths: list[str] | None
) -> StreamingResponse:
    if format not in ("zip", "tar"):
        raise InvalidInput(f"Archive format {format!r} is not known", hint="Use format=zip or format=tar.")
    model = services.models.get(principal, model_id, with_files=paths is None)
    if model.state != "ready":
        raise Conflict(f"Model {model_id} is {model.state}; it can be downloaded once it is ready")
    files = list(model.files or ())
    if paths is not None:
        by_path = services.models.files_at(principal, model_id, paths)
        unknown = [p for p in paths if p not in by_path]
        if unknown:
            raise NotFound(f"Model {model_id} has no file {unknown[0]!r}")
        files = [by_path[p] for p in dict.fromkeys(paths)]
    blobs = services.models.blobs
    stream = (stream_zip if format == "zip" else stream_tar)(files, lambda sha: blobs.read(sha, 1024 * 1024))
    name = quote(f"{model.name}-v{model.version}.{format}", safe="")
    return StreamingResponse(
        stream,
        media_type="application/zip" if format == "zip" else "application/x-tar",
        headers={
            "Content-Disposition": f"attachment; filename*=utf-8''{name}",
            "X-Content-Type-Options": "nosniff",
        },
    )
