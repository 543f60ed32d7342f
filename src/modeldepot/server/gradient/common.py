"""What every Gradient route shares: the error body, JSON bodies on GETs, URLs and object shapes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from ...errors import InvalidInput, ModeldepotError, ServerError
from ...records import Model, Project, to_json
from ...services.signing import UrlSigner

log = logging.getLogger("modeldepot.server.gradient")


def error_response(error: ModeldepotError) -> JSONResponse:
    """``{"error": {"name", "status", "message"}}``: the CLI prints ``<prefix>: <message>`` from it."""
    body: dict[str, Any] = {
        "error": {"name": type(error).__name__, "status": error.status, "message": error.detail}
    }
    if error.hint:
        # The CLI reads only "message"; the hint is there for people calling the routes by hand.
        body["error"]["hint"] = error.hint
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers)


class GradientRoute(APIRoute):
    """A route whose errors (validation and auth included) come back in Gradient's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ModeldepotError as exc:
                return error_response(exc)
            except ClientDisconnect:
                # The client went away mid-request (e.g. an upload cut off): nothing to answer, no bug.
                log.info("client disconnected during %s %s", request.method, request.url.path)
                return Response(status_code=400)
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'body'))}: {e.get('msg')}"
                    for e in list(exc.errors())[:5]
                )
                return error_response(InvalidInput(f"Invalid request: {problems}"))
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return error_response(ServerError("The server hit an unexpected error; it has been logged"))

        return handle


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object in the body, also on GET requests (where the CLI puts its filters); {} if none."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput("The request body is not valid JSON", hint="Send a JSON object.") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"The request body must be a JSON object, not {type(value).__name__}")
    return value


JsonBody = Annotated[dict[str, Any], Depends(json_body)]


def signer(request: Request) -> UrlSigner:
    value: UrlSigner = request.app.state.url_signer
    return value


def external_url(request: Request, path: str) -> str:
    """The absolute URL of ``path`` on this server, as clients reach it (``public_url`` when set)."""
    public = request.app.state.settings.public_url
    base = public if public else str(request.base_url)
    return base.rstrip("/") + path


def model_json(request: Request, model: Model) -> dict[str, Any]:
    """A model as the Gradient CLI and SDK read it (§5 of the wire contract), plus modeldepot's fields."""
    return {
        "id": model.id,
        "name": model.name,
        "projectId": model.project_id,
        "modelType": model.type,
        "url": external_url(request, f"/api/v1/models/{model.id}/files"),
        "modelPath": model.storage_location,
        "deploymentState": model.deployment_state or "Stopped",
        "tags": list(model.tags),
        "summary": model.summary,
        "detail": model.metadata,
        "notes": model.notes,
        "datasetRef": model.dataset_ref,
        "dtCreated": to_json(model.created_at),
        "version": model.version,
        "state": model.state,
        "size": model.size,
        "fileCount": model.file_count,
        "source": model.source,
    }


def project_json(project: Project) -> dict[str, Any]:
    return {
        "handle": project.id,
        "id": project.id,
        "name": project.name,
        "repoName": project.repo_name,
        "repoUrl": project.repo_url,
        "dtCreated": to_json(project.created_at),
        "tags": list(project.tags),
        "modelCount": project.model_count,
    }
