"""Feeding a request body to blocking code (file and blob-store writes) on a worker thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from ..errors import IntegrityError

T = TypeVar("T")

# The body arrives in small pieces (often 64 KiB); the worker gets them in batches of this size, so
# the hop between the event loop and the thread costs little per byte.
BATCH = 4 * 1024 * 1024


async def consume_body(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume(chunks)`` on a worker thread while the event loop reads the body into it."""
    stream = request.stream().__aiter__()

    async def next_batch() -> bytes | None:
        pieces: list[bytes] = []
        size = 0
        while size < BATCH:
            try:
                piece = await stream.__anext__()
            except StopAsyncIteration:
                break
            except ClientDisconnect:
                # Nobody will read the answer; this only ends the request quietly, nothing is kept.
                raise IntegrityError(
                    "The connection closed before the whole body arrived", hint="Send it again."
                ) from None
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces) if pieces else None

    def chunks() -> Iterator[bytes]:
        while (batch := anyio.from_thread.run(next_batch)) is not None:
            yield batch

    return await anyio.to_thread.run_sync(lambda: consume(chunks()))
