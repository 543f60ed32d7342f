"""The one error hierarchy of modeldepot.

Every error has a stable ``code`` (sent over HTTP in problem+json bodies), an HTTP ``status`` and a
CLI ``exit_code``. The server maps a raised error to a response once (``server/problems.py``); the SDK
maps a response back to the same class by its code (:func:`error_from_problem`); the CLI prints one line
and exits with ``exit_code``. ``docs/reference/errors.md`` lists them and a test keeps it in step.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModeldepotError(Exception):
    """Base class of every error modeldepot raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    title: ClassVar[str] = "Unexpected error"

    def __init__(self, detail: str, *, hint: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.hint = hint
        self.extra = dict(extra or {})

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": f"urn:modeldepot:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.hint:
            body["hint"] = self.hint
        if self.extra:
            body["extra"] = self.extra
        return body


class InvalidInput(ModeldepotError):
    """The request was understood but its content is not acceptable."""

    code = "invalid_input"
    status = 422
    exit_code = 3
    title = "Invalid input"


class NotFound(ModeldepotError):
    """The thing asked for does not exist, or the API key may not see it."""

    code = "not_found"
    status = 404
    exit_code = 4
    title = "Not found"


def project_not_found(shown: str) -> NotFound:
    """The error for a project that does not exist or that the API key may not see (the same, so
    that ids of other projects leak nothing); ``shown`` is how the id is named in the message."""
    return NotFound(
        f"Project {shown} not found",
        hint="Use the id (pr…) of a project this API key may see: `modeldepot projects list` shows them.",
    )


class Conflict(ModeldepotError):
    """The request clashes with the current state (e.g. a project that still has models)."""

    code = "conflict"
    status = 409
    exit_code = 5
    title = "Conflict"


class Unauthenticated(ModeldepotError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthenticated"
    status = 401
    exit_code = 6
    title = "Unauthenticated"


class PermissionDenied(ModeldepotError):
    """The API key is valid but its role does not allow this operation."""

    code = "permission_denied"
    status = 403
    exit_code = 7
    title = "Permission denied"


class IntegrityError(ModeldepotError):
    """Bytes did not match the size or sha256 they were announced with."""

    code = "integrity_error"
    status = 422
    exit_code = 8
    title = "Integrity check failed"


class PayloadTooLarge(ModeldepotError):
    """A JSON document or field is larger than the server accepts."""

    code = "payload_too_large"
    status = 413
    exit_code = 3
    title = "Payload too large"


class StorageFull(ModeldepotError):
    """The blob store, or the disk of the metadata database, has no room left."""

    code = "storage_full"
    status = 507
    exit_code = 9
    title = "Storage full"


class ServerError(ModeldepotError):
    """The server failed in a way it did not expect (a bug: please report it)."""

    code = "server_error"
    status = 500
    exit_code = 1
    title = "Server error"


class ConnectionFailed(ModeldepotError):
    """The SDK could not reach the server (raised on the client side only)."""

    code = "connection_failed"
    status = 503
    exit_code = 10
    title = "Cannot reach the server"


ALL_ERRORS: tuple[type[ModeldepotError], ...] = (
    InvalidInput,
    NotFound,
    Conflict,
    Unauthenticated,
    PermissionDenied,
    IntegrityError,
    PayloadTooLarge,
    StorageFull,
    ServerError,
    ConnectionFailed,
)

_BY_CODE = {cls.code: cls for cls in ALL_ERRORS}


def error_from_problem(status: int, body: Any) -> ModeldepotError:
    """Rebuild the typed error from a problem+json body (used by the SDK)."""
    if isinstance(body, dict):
        cls = _BY_CODE.get(str(body.get("code", "")))
        detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
        hint = body.get("hint")
        extra = body.get("extra") if isinstance(body.get("extra"), dict) else None
    else:
        cls, detail, hint, extra = None, (str(body)[:500] or f"HTTP {status}"), None, None
    if cls is None:
        cls = next((c for c in ALL_ERRORS if c.status == status), ServerError)
    return cls(detail, hint=hint if isinstance(hint, str) else None, extra=extra)
