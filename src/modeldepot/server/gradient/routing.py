"""The router of the Gradient routes: exact paths, with and without the trailing slash, no redirects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from .common import GradientRoute

F = TypeVar("F", bound=Callable[..., Any])

# Not in the OpenAPI document: these routes speak Gradient's protocol, which /docs does not describe.
router = APIRouter(route_class=GradientRoute, include_in_schema=False, tags=["gradient"])


def route(method: str, path: str) -> Callable[[F], F]:
    """Serve ``path`` and its twin with (or without) a trailing slash, so nothing ever redirects.

    The CLI's POSTs would turn into body-less GETs if a slash-normalising redirect answered them.
    """
    twin = path[:-1] if path.endswith("/") else path + "/"

    def register(endpoint: F) -> F:
        for each in (path, twin):
            router.add_api_route(each, endpoint, methods=[method])
        return endpoint

    return register
