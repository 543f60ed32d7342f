"""Errors to ``application/problem+json``, mapped once for every route."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidInput, ModeldepotError, NotFound, ServerError

log = logging.getLogger("modeldepot.server")

PROBLEM = "application/problem+json"


def problem_response(error: ModeldepotError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if error.status == 401 else None
    return JSONResponse(error.to_problem(), status_code=error.status, media_type=PROBLEM, headers=headers)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        where = [str(p) for p in err.get("loc", ())]
        loc = ".".join(where[1:]) or "".join(where)  # where[0] is body, query, path or header
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ModeldepotError)
    async def _domain(_request: Request, exc: ModeldepotError) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(
                InvalidInput("The request body is not valid JSON", hint="Send a JSON object.")
            )
        return problem_response(
            InvalidInput(
                f"Invalid request: {_describe(errors)}",
                hint="See /docs for the fields each operation takes.",
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return problem_response(
                NotFound("No such API route", hint="The API lives under /api/v1; see /docs.")
            )
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's answer when a body is JSON in syntax but json.loads still fails: not UTF-8,
            # nested too deeply, a number with too many digits.
            return problem_response(
                InvalidInput(
                    f"The request body cannot be read as JSON: {exc.__cause__}",
                    hint="Send a JSON object in UTF-8.",
                )
            )
        body = {
            "type": "urn:modeldepot:error:http_error",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "code": "http_error",
        }
        # Its headers too: a 405's Allow (RFC 9110 requires it), a 401's WWW-Authenticate.
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM, headers=exc.headers)

    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ModuleNotFoundError:  # no s3:// blob store without boto3
        pass
    else:

        async def _object_store(_request: Request, exc: Exception) -> JSONResponse:
            # The object store of an s3:// blob URL failed (down, unreachable, refusing): say so.
            # (A handler of its own class: one for Exception closes the connection after answering.)
            log.error("the object store failed: %s: %s", type(exc).__name__, exc)
            return problem_response(
                ServerError(
                    f"The server's object store failed: {exc}",
                    hint="Retry once the object store is back; if it keeps failing, an admin should "
                    "check the server's --blob-url and credentials.",
                )
            )

        app.add_exception_handler(BotoCoreError, _object_store)
        app.add_exception_handler(ClientError, _object_store)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return problem_response(ServerError("The server hit an unexpected error; it has been logged"))
