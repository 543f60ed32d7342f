"""Health and identity."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..._version import __version__
from ..deps import PrincipalDep

router = APIRouter(tags=["meta"])


@router.get("/health")
def health() -> dict[str, Any]:
    """Liveness probe; needs no key."""
    return {"status": "ok", "version": __version__}


@router.get("/whoami")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    """The calling API key: its id, user, and roles."""
    return {
        "key_id": principal.key_id,
        "user": principal.user,
        "is_admin": principal.is_admin,
        "roles": dict(principal.roles),
    }
