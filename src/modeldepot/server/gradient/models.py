"""Gradient's model repository routes (E1-E7 of the wire contract) over the model service.

Upload: E1 creates the model (``uploading``, no files), E2 hands out a presigned PUT URL on this
server, E3 receives the file wrapped in a multipart envelope, strips the envelope while streaming
into the blob store, unpacks ``model.zip`` (how the CLI sends a directory) and marks the model ready.
There is no "finished" call: the PUT is the signal. Download: E6 lists the files with presigned GET
URLs, E7 serves them without an API key.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from ...errors import Conflict, InvalidInput
from ...paths import normalize_path
from ...records import Model, ModelFile
from ...services.auth import Principal
from ...services.container import Services
from ..api.models import download_file
from ..deps import PrincipalDep, ServicesDep
from .common import JsonBody, external_url, model_json, signer
from .envelope import EnvelopeStripper
from .routing import route

UPLOAD_URL_TTL = timedelta(hours=1)
DOWNLOAD_URL_TTL = timedelta(hours=12)
# The CLI zips a directory into this one file; an upload of that name is unpacked into the model.
ARCHIVE_NAME = "model.zip"
UPLOAD_PATH = "/gradient-upload/"
DOWNLOAD_PATH = "/gradient-download/"
_WRITE_BATCH = 4 * 1024 * 1024

# Filters getModelList accepts in {"filter": {"where": {"and": [{KEY: VALUE}, ...]}}}.
_MODEL_FILTERS = ("id", "projectId", "name", "modelType")


@route("POST", "/mlModels/createModelV2")
def create_model(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    name: str | None = None,
    modelType: str | None = None,  # the CLI's query parameter names
    projectId: str | None = None,
    summary: str | None = None,
    notes: str | None = None,
    datasetRef: str | None = None,
) -> Any:
    """E1. Without ``datasetRef`` the model waits for its file (E2, E3); with it, it is ready at once."""
    project_id = projectId or services.projects.default_for_models(principal).id
    model = services.uploads.create_empty(
        principal,
        project_id,
        name=name,
        type=modelType,
        summary=summary,
        notes=notes,
        dataset_ref=datasetRef,
        ready=bool(datasetRef),
    )
    return model_json(request, model)


@route("GET", "/mlModels/getPresignedModelUrl")
def presigned_upload_url(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    fileName: str | None = None,
    modelHandle: str | None = None,
    contentType: str | None = None,  # accepted and ignored: bytes are stored as they are
    clusterId: str | None = None,  # accepted and ignored: there is one storage
) -> Any:
    """E2. A JSON string: the URL the CLI PUTs the file to, signed for that model and file name."""
    if not modelHandle:
        raise InvalidInput("modelHandle is required", hint="Pass the id that createModelV2 returned.")
    file_name = normalize_path(fileName or "")
    model = services.uploads.awaiting_files(principal, modelHandle)
    token = signer(request).sign(
        "PUT", {"mo": model.id, "f": file_name, "k": principal.key_id}, UPLOAD_URL_TTL
    )
    return external_url(request, UPLOAD_PATH + token)


@route("PUT", UPLOAD_PATH + "{token}")
async def receive_upload(token: str, request: Request, services: ServicesDep) -> Any:
    """E3. The presigned PUT: no API key, the token authorizes it. Works once, then the model is ready."""
    claims = signer(request).verify(token, "PUT")
    principal = await run_in_threadpool(services.auth.principal_for_key, str(claims.get("k")))
    model_id, file_name = str(claims.get("mo")), str(claims.get("f"))
    # Refuse a used URL before reading a byte of the body.
    await run_in_threadpool(services.uploads.awaiting_files, principal, model_id)
    if file_name == ARCHIVE_NAME:
        model = await _receive_archive(request, services, principal, model_id)
    else:
        model = await _receive_file(request, services, principal, model_id, file_name)
    return model_json(request, model)


async def _pump(request: Request, write: Callable[[bytes], object]) -> None:
    """Stream the body through the envelope stripper into ``write`` (run in a thread, in batches)."""
    stripper = EnvelopeStripper()
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        data = stripper.feed(chunk)
        if data:
            pending.append(data)
            size += len(data)
        if size >= _WRITE_BATCH:
            await run_in_threadpool(write, b"".join(pending))
            pending, size = [], 0
    pending.append(stripper.finish())
    await run_in_threadpool(write, b"".join(pending))


async def _receive_file(
    request: Request, services: Services, principal: Principal, model_id: str, file_name: str
) -> Model:
    writer = services.models.blobs.writer()
    try:
        await _pump(request, writer.write)
        sha256, size = await run_in_threadpool(writer.commit_computed)
    except BaseException:
        writer.abort()
        raise
    received = [ModelFile(path=file_name, size=size, sha256=sha256)]
    return await run_in_threadpool(services.uploads.receive_files, principal, model_id, received)


async def _receive_archive(
    request: Request, services: Services, principal: Principal, model_id: str
) -> Model:
    # A zip is read from its end (the central directory), so it is spooled to disk first, never to memory.
    spool_dir = request.app.state.settings.data_dir / "tmp"
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool_dir, prefix="gradient-upload-") as spool:
        await _pump(request, spool.write)
        await run_in_threadpool(spool.seek, 0)
        return await run_in_threadpool(services.uploads.receive_zip, principal, model_id, spool)


def _where(body: dict[str, Any]) -> dict[str, Any]:
    """The conditions of a loopback-style ``{"filter": {"where": {"and": [...]}}}``, as one dict."""
    filt = body.get("filter")
    if filt is None:
        return {}
    where = filt.get("where") if isinstance(filt, dict) else None
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise InvalidInput("filter.where must be an object")
    parts = where.get("and", [where])
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise InvalidInput("filter.where.and must be a list of objects")
    conditions: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in _MODEL_FILTERS:
                raise InvalidInput(
                    f"Filtering models on {key!r} is not supported", hint=f"Use {', '.join(_MODEL_FILTERS)}."
                )
            if not isinstance(value, str):
                raise InvalidInput(f"The {key} filter must be a string")
            conditions[key] = value
    return conditions


def _tag_filter(body: dict[str, Any]) -> list[str]:
    tags = body.get("tagFilter") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInput("tagFilter must be a list of strings")
    return tags


@route("GET", "/mlModels/getModelList/")
def list_models(
    request: Request, body: JsonBody, principal: PrincipalDep, services: ServicesDep, limit: int = -1
) -> Any:
    """E4. ``models list`` (filters in the GET body; tags match any) and ``models details`` (by id)."""
    where = _where(body)
    tags = _tag_filter(body)
    if "id" in where:
        # Details: an unknown id is a 404, so the CLI prints "Failed to fetch data: Model … not found".
        model = services.models.get(principal, where["id"], with_files=False)
        wanted = {"projectId": model.project_id, "name": model.name, "modelType": model.type}
        matches = all(where.get(k, v) == v for k, v in wanted.items()) and (
            not tags or bool(set(tags) & set(model.tags))
        )
        return {"modelList": [model_json(request, model)] if matches else []}
    models = services.models.list_matching(
        principal,
        project_id=where.get("projectId"),
        any_tags=tags,
        name=where.get("name"),
        type=where.get("modelType"),
        limit=limit if limit > 0 else None,
    )
    return {"modelList": [model_json(request, m) for m in models], "total": len(models)}


def _model_id(body: dict[str, Any]) -> str:
    model_id = body.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidInput('The body must name the model: {"id": "mo…"}')
    return model_id


@route("POST", "/mlModels/deleteModel/")
def delete_model(body: JsonBody, principal: PrincipalDep, services: ServicesDep) -> Any:
    """E5. Also the CLI's rollback when an upload fails; the model's files and tags go with it."""
    services.models.delete(principal, _model_id(body))
    return {}


@route("GET", "/mlModels/listFiles/")
def list_files(request: Request, body: JsonBody, principal: PrincipalDep, services: ServicesDep) -> Any:
    """E6. A JSON array of {file, size[, url]}; each url is a presigned GET that needs no API key."""
    model_id = _model_id(body)
    files = services.models.files(principal, model_id)
    if body.get("links"):
        # The CLI saves whatever each URL answers as the file, without looking at the status: the
        # 409 of a model still uploading must stop it here (it prints the message and saves nothing).
        model = services.models.get(principal, model_id)
        if model.state != "ready":
            raise Conflict(
                f"Model {model_id} is {model.state}; its files can be downloaded once it is ready",
                hint="Finish its upload (run it again), or delete it.",
            )
    sign = signer(request).sign
    out = []
    for f in files:
        entry: dict[str, Any] = {"file": f.path, "size": f.size, "sha256": f.sha256}
        if body.get("links"):
            token = sign("GET", {"mo": model_id, "p": f.path, "k": principal.key_id}, DOWNLOAD_URL_TTL)
            name = quote(f.path.rsplit("/", 1)[-1], safe="")
            entry["url"] = external_url(request, f"{DOWNLOAD_PATH}{token}/{name}")
        out.append(entry)
    return out


@route("GET", DOWNLOAD_PATH + "{token}/{name}")
def download(token: str, name: str, request: Request, services: ServicesDep) -> Response:
    """E7. The bytes of one file; the token names the model, the path and the key that signed it."""
    claims = signer(request).verify(token, "GET")
    principal = services.auth.principal_for_key(str(claims.get("k")))
    return download_file(str(claims.get("mo")), str(claims.get("p")), request, principal, services)
