"""A readable file over an iterator of byte chunks (what tarfile and friends read from).

Shared by the server (building archives from blobs) and the SDK (reading a tar stream as it arrives).
"""

from __future__ import annotations

from collections.abc import Iterator


class ChunkReader:
    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
