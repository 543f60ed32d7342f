"""An ASGI guard that refuses request bodies larger than a limit, with or without Content-Length."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import PayloadTooLarge
from .problems import problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def streams_to_disk(scope: Scope) -> bool:
    """Requests whose bodies are file bytes streamed to the blob store, not JSON."""
    path = scope["path"]
    if scope["method"] == "POST":
        return path.startswith("/api/v1/models/") and path.endswith("/blobs")
    return scope["method"] == "PUT" and ("/blobs/" in path or "/gradient-upload/" in path)


class BodyLimit:
    """Limit JSON bodies; blob uploads stream to disk and are exempt (see :func:`streams_to_disk`)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or streams_to_disk(scope):
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read up to the limit first, then replay the body to the app.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            PayloadTooLarge(
                f"The request body is larger than {self.max_bytes} bytes",
                hint="Send less, or raise MODELDEPOT_MAX_JSON_BYTES on the server.",
            )
        )
        await response(scope, receive, send)
