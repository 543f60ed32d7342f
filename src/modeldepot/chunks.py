"""A readable file over an iterator of byte chunks (what tarfile and friends read from).

Shared by the server (building archives from blobs) and the SDK (reading a tar stream as it arrives).
"""

from __future__ import annotations

from collections.abc import Iterator


class ChunkReader:
    """Keeps a position in the current chunk rather than cutting the chunk after each read: tarfile
    reads a 1 MiB chunk 512 bytes and 10 KiB at a time, and cutting would copy the rest each time."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        if 0 <= n <= len(self._buffer) - start:
            self._pos = start + n
            return self._buffer[start : self._pos]
        pieces = [self._buffer[start:]]
        have = len(pieces[0])
        while n < 0 or have < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        taken = len(data) if n < 0 else min(n, len(data))
        self._buffer, self._pos = data, taken
        return data[:taken] if taken < len(data) else data
