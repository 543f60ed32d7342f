"""Request dependencies: the services of this app and the calling API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidInput
from ..services.auth import Principal
from ..services.container import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def api_key_of(request: Request) -> str | None:
    """The key from ``X-API-Key`` (what the Gradient CLI sends) or ``Authorization: Bearer``."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def refuse_nul(request: Request) -> None:
    """No id, name or path holds a NUL, and PostgreSQL cannot even compare one: refuse it in the URL."""
    if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in request.query_params.multi_items()):
        raise InvalidInput(
            "The URL contains a NUL character (%00)", hint="Remove it: no id, name or path has one."
        )


async def get_principal(request: Request, services: Annotated[Services, Depends(get_services)]) -> Principal:
    refuse_nul(request)
    return await run_in_threadpool(services.auth.authenticate, api_key_of(request))


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
