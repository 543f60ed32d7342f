"""/api/v1/models: start an upload, send blobs, commit; list, show, change, download, delete."""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.types import Receive, Scope, Send

from ...errors import Conflict, IntegrityError, InvalidInput, NotFound
from ...records import ModelFile, to_json
from ...services.auth import Principal
from ...services.container import Services
from ..archive import ArchiveResponse, first_damaged, stream_tar, stream_zip

# The data plane's rules for the conditional headers and its answers, so that a file's two URLs
# answer alike.
from ..dataplane import (
    BYTE_RANGE,
    http_date,
    if_match_holds,
    if_none_match_hits,
    if_range_holds,
    parse_range,
    precondition_failed,
    range_not_satisfiable,
)
from ..deps import PrincipalDep, ServicesDep
from ..problems import PROBLEM

router = APIRouter(tags=["models"])

log = logging.getLogger("modeldepot.server")

PRESIGN_SECONDS = 3600
FSCK_HINT = (
    "The server's copy of the file is damaged or gone: an administrator should run `modeldepot fsck` "
    "to find every damaged blob, then upload the affected models again."
)


class BlobFileResponse(FileResponse):
    """Starlette's FileResponse (HEAD, Last-Modified), sent in 1 MiB reads instead of 64 KiB: each
    read is a hop to a worker thread, so fewer of them leave the event loop free for more bytes.

    The range to send is decided before (``span``: start and end, end exclusive; None: the whole
    file), by the data plane's rules: Starlette's own answers a Range it does not like with a
    text/plain 400, and several ranges with multipart/byteranges. So the request's Range and
    If-Range are replaced by that decision before Starlette looks.
    """

    chunk_size = 1024 * 1024
    span: tuple[int, int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self.span is not None:
            headers.append((b"range", f"bytes={self.span[0]}-{self.span[1] - 1}".encode()))
        await super().__call__({**scope, "headers": headers}, receive, send)


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


@router.api_route(
    "/models/{model_id}/files/{path:path}", methods=["GET", "HEAD"]
)  # one route: a 405 allows both
def download_file(
    model_id: str, path: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """The bytes of one file, as an attachment (HEAD: the same headers, no body). One byte range,
    If-Range (the ETag or the Last-Modified date), If-Match (the sha256 ETag, compared strongly) and
    If-None-Match (compared weakly) are honoured as on the data plane: a Range that is not one
    ``bytes=`` range is ignored, one past the end gets 416.

    With an object store behind the server, the answer is a redirect to a presigned URL there.
    """
    found = services.models.file(principal, model_id, path)
    etag = f'"{found.sha256}"'
    if not if_match_holds(request.headers.get("if-match"), etag):
        return JSONResponse(precondition_failed(etag), status_code=412, media_type=PROBLEM)
    if if_none_match_hits(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"X-Content-Type-Options": "nosniff", "X-Checksum-Sha256": found.sha256, "ETag": etag}
    filename = found.path.rsplit("/", 1)[-1]
    blobs = services.models.blobs
    presigned = (
        blobs.presign_get(found.sha256, PRESIGN_SECONDS, filename, found.size)
        if found.size >= blobs.presign_min_size
        else None
    )
    if presigned is not None:
        return RedirectResponse(presigned, status_code=307, headers={"ETag": etag})
    local = blobs.local_path(found.sha256)
    stat = _stat(local) if local is not None else None
    if local is not None and stat is not None:
        if stat.st_size != found.size:
            raise _damaged(found, f"has {stat.st_size} bytes, not {found.size}")
        wanted = request.headers.get("range")
        if wanted is not None and not BYTE_RANGE.fullmatch(wanted.strip()):
            wanted = None  # not a single byte range: ignored, the whole file is sent (RFC 9110)
        # The data plane's Last-Modified too (Starlette would send the same from this stat).
        last_modified = http_date(stat.st_mtime)
        if not if_range_holds(request.headers.get("if-range"), etag, last_modified):
            wanted = None  # the client holds another version: the whole of this one
        span = None if wanted is None else parse_range(wanted, stat.st_size)
        if wanted is not None and span is None:
            return JSONResponse(
                range_not_satisfiable(wanted, stat.st_size),
                status_code=416,
                media_type=PROBLEM,
                headers={"Content-Range": f"bytes */{stat.st_size}"},
            )
        response = BlobFileResponse(
            local,
            stat_result=stat,
            media_type="application/octet-stream",
            filename=filename,
            headers=headers | {"Last-Modified": last_modified},
            content_disposition_type="attachment",
        )
        response.span = span
        return response
    # An object store (a small file), or a blob that is not where the index says it is: its size (for
    # HEAD) or first bytes are fetched before the answer starts, so that a missing blob is an error
    # the client can read rather than a 200 cut off after its headers.
    headers |= {"Content-Length": str(found.size)}
    if request.method == "HEAD":
        have = blobs.size(found.sha256)
        if have != found.size:
            raise _damaged(found, "is missing from the blob store" if have is None else f"has {have} bytes")
        return Response(media_type="application/octet-stream", headers=headers)
    chunks = blobs.read(found.sha256)
    try:
        first = next(chunks, b"")
    except FileNotFoundError:
        raise _damaged(found, "is missing from the blob store") from None
    return StreamingResponse(
        itertools.chain([first], chunks), media_type="application/octet-stream", headers=headers
    )


def _stat(path: os.PathLike[str]) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:  # deleted since it was found
        return None


def _damaged(f: ModelFile, what: str) -> IntegrityError:
    """The error for a file whose blob is missing or damaged, logged for the operator."""
    log.error(
        "blob %s (file %r) %s; run `modeldepot fsck` to find every damaged blob", f.sha256, f.path, what
    )
    return IntegrityError(f"File {f.path!r} cannot be served: its blob {f.sha256} {what}", hint=FSCK_HINT)


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
    # A missing or truncated blob is an error before the answer starts; one damaged inside is found
    # while it is sent, and cuts the archive off (see server/archive.py).
    remote = bool(files) and blobs.local_path(files[0].sha256) is None  # no files here: an object store
    if (damaged := first_damaged(files, blobs.size, remote=remote)) is not None:
        raise _damaged(*damaged)
    stream = (stream_zip if format == "zip" else stream_tar)(files, lambda sha: blobs.read(sha, 1024 * 1024))
    name = quote(f"{model.name}-v{model.version}.{format}", safe="")
    return ArchiveResponse(
        stream,
        media_type="application/zip" if format == "zip" else "application/x-tar",
        headers={
            "Content-Disposition": f"attachment; filename*=utf-8''{name}",
            "X-Content-Type-Options": "nosniff",
        },
    )
