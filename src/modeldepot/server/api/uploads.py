"""/api/v1 uploads: start (or resume) an upload, send whole blobs or parts, complete, commit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...errors import IntegrityError
from ...records import to_json
from ...services.ports import BlobWriter
from ...services.uploads import StagedPlan
from ..deps import PrincipalDep, ServicesDep
from ..streams import consume_body

router = APIRouter(tags=["uploads"])


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    size: int
    sha256: str


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not silently ignored

    name: str
    files: list[ManifestEntry]
    type: str | None = None
    summary: dict[str, Any] | None = None
    notes: str | None = None
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None
    dataset_ref: str | None = None
    upload_key: str | None = Field(
        None, description="A digest of what is uploaded: the same key from the same user resumes that upload."
    )
    staged: dict[str, str] | None = Field(
        None,
        description="sha256 → id of a staging area this key opened (POST …/stagings) and filled while it "
        "hashed: a missing blob takes it over with the parts it holds; an unneeded one is dropped.",
    )


class StagingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(strict=True, description="The size in bytes of the file whose parts will follow.")


@router.post("/projects/{project_id}/models", status_code=201)
def start_upload(
    project_id: str, body: ModelCreate, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """Create a model from its manifest (or resume one by ``upload_key``); list the blobs still to send.

    Each missing blob says how to send it: ``url`` for one PUT of the whole blob, or ``parts_url``
    to ask for its parts (large blobs). Then POST ``…/commit``.
    """
    plan = services.uploads.start(
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
        upload_key=body.upload_key,
        staged=body.staged,
    )
    # …/models/{id}/blobs/{sha256} (put_blob) and …/{sha256}/parts (blob_parts), from one url_for:
    # it walks every route, and a manifest may list thousands of blobs (a sha256 needs no quoting).
    blobs_url = str(request.url_for("put_blobs", model_id=plan.model.id))
    missing = []
    for m in plan.missing:
        entry: dict[str, Any] = {"sha256": m.sha256, "size": m.size}
        if m.in_parts:
            entry["parts_url"] = f"{blobs_url}/{m.sha256}/parts"
        else:
            entry["url"] = f"{blobs_url}/{m.sha256}"
        missing.append(entry)
    return {"model": to_json(plan.model), "missing": missing, "resumed": plan.resumed}


def _write_all(writer: BlobWriter, chunks: Iterator[bytes], sha256: str, size: int) -> None:
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.commit(sha256, size)
    except BaseException:
        writer.abort()
        raise


@router.put("/models/{model_id}/blobs/{sha256}", status_code=204)
async def put_blob(
    model_id: str, sha256: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Stream one whole blob; it is hashed on the way and kept only if size and sha256 match."""
    writer, size = await run_in_threadpool(services.uploads.open_blob, principal, model_id, sha256)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != size:
        writer.abort()
        raise IntegrityError(f"Content-Length is {declared}, but the blob {sha256} has {size} bytes")
    await consume_body(request, lambda chunks: _write_all(writer, chunks, sha256, size))
    await run_in_threadpool(services.uploads.blob_received, model_id, sha256)
    return Response(status_code=204)


@router.post("/models/{model_id}/blobs")
async def put_blobs(model_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Many small blobs in one request: frames of ``<sha256> <size>\\n`` followed by the bytes.

    Saves a round trip per file for directories of many small files; each blob is still verified.
    """
    count = await consume_body(
        request, lambda chunks: services.uploads.receive_batch(principal, model_id, chunks)
    )
    return {"received": count}


@router.post("/models/{model_id}/blobs/{sha256}/parts")
def blob_parts(
    model_id: str, sha256: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """The parts of a large blob (opening its staging area on first call) and which have arrived.

    A part with a ``url`` goes straight to the object store; without one, PUT it to this server at
    ``…/parts/{number}``. Parts may be sent in any order and at the same time; with ``in_order``
    true the server hashes each part as it arrives if the parts before it are in, so sending them
    one after the other, in order, spares it reading them back.
    """
    plan = services.uploads.parts(principal, model_id, sha256)
    parts = []
    for p in plan.parts:
        url = p.url or str(
            request.url_for("put_part", model_id=model_id, sha256=plan.sha256, number=p.number)
        )
        parts.append(
            {"number": p.number, "offset": p.offset, "size": p.size, "received": p.received, "url": url}
        )
    complete = str(request.url_for("complete_blob", model_id=model_id, sha256=plan.sha256))
    return {
        "sha256": plan.sha256,
        "size": plan.size,
        "part_size": plan.part_size,
        "parts": parts,
        "in_order": plan.in_order,
        "complete_url": complete,
    }


@router.put("/models/{model_id}/blobs/{sha256}/parts/{number}", status_code=204)
async def put_part(
    model_id: str,
    sha256: str,
    number: int,
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    x_part_sha256: Annotated[str | None, Header()] = None,
) -> Response:
    """One part's bytes; with an ``X-Part-Sha256`` header the part itself is checked too."""
    await consume_body(
        request,
        lambda chunks: services.uploads.write_part(
            principal, model_id, sha256, number, chunks, x_part_sha256
        ),
    )
    return Response(status_code=204)


@router.post("/models/{model_id}/blobs/{sha256}/complete", status_code=204)
def complete_blob(model_id: str, sha256: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """All parts arrived: verify the whole blob (size, sha256) and keep it."""
    services.uploads.complete_blob(principal, model_id, sha256)
    return Response(status_code=204)


@router.post("/models/{model_id}/commit")
def commit(model_id: str, principal: PrincipalDep, services: ServicesDep) -> Any:
    """Check every blob and mark the model ready."""
    return to_json(services.uploads.commit(principal, model_id))


# -- staging areas opened before the sha256 is known ------------------------------------------------


@router.post("/projects/{project_id}/stagings", status_code=201)
def create_staging(
    project_id: str, body: StagingCreate, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Any:
    """Open a staging area for a large file the client is still hashing, and list where its parts go.

    The client sends the parts while it hashes, then names the area in its manifest (``staged`` of
    ``POST …/models``): a blob the server still needs takes the area over, parts and all.
    """
    return _staged(services.uploads.stage(principal, project_id, body.size), request)


@router.post("/stagings/{staging_id}/parts")
def resume_staging(staging_id: str, request: Request, principal: PrincipalDep, services: ServicesDep) -> Any:
    """A staging area this key opened and no upload has named yet, with the parts that arrived.

    For a client that was cut off while it sent parts ahead: it sends the parts not ``received`` and
    names the area in its manifest as before. The area gets the full upload expiry again.
    """
    return _staged(services.uploads.resume_staging(principal, staging_id), request)


def _staged(plan: StagedPlan, request: Request) -> dict[str, Any]:
    sid = plan.staging.id
    parts = [
        {
            "number": p.number,
            "offset": p.offset,
            "size": p.size,
            "received": p.received,
            "url": p.url or str(request.url_for("put_staged_part", staging_id=sid, number=p.number)),
        }
        for p in plan.parts
    ]
    return {
        "id": sid,
        "size": plan.staging.size,
        "part_size": plan.staging.part_size,
        "in_order": plan.in_order,
        "expires_at": plan.staging.expires_at.isoformat().replace("+00:00", "Z"),
        "parts": parts,
        "url": str(request.url_for("cancel_staging", staging_id=sid)),
    }


@router.put("/stagings/{staging_id}/parts/{number}", status_code=204)
async def put_staged_part(
    staging_id: str,
    number: int,
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    x_part_sha256: Annotated[str | None, Header()] = None,
) -> Response:
    """One part of a staging area no upload has named yet (afterwards, use the blob's own part URLs)."""
    await consume_body(
        request,
        lambda chunks: services.uploads.write_staged_part(
            principal, staging_id, number, chunks, x_part_sha256
        ),
    )
    return Response(status_code=204)


@router.delete("/stagings/{staging_id}", status_code=204)
def cancel_staging(staging_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """Drop a staging area that no upload has named, with its parts."""
    services.uploads.cancel_staging(principal, staging_id)
    return Response(status_code=204)
