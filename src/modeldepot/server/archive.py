"""A whole model as one zip or tar stream, built while it is sent (no temporary files)."""

from __future__ import annotations

import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import IO

from ..chunks import ChunkReader
from ..records import ModelFile

Reader = Callable[[str], Iterator[bytes]]


class _Pipe:
    """A write-only, non-seekable file whose bytes are collected for the response to send."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        if data:
            self.pieces.append(bytes(data))
            self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.pieces)
        self.pieces.clear()
        return out


def stream_tar(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    pipe = _Pipe()
    now = int(time.time())
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for f in files:
            info = tarfile.TarInfo(f.path)
            info.size, info.mtime, info.mode = f.size, now, 0o644
            tar.addfile(info, ChunkReader(read(f.sha256)))
            yield pipe.take()
    yield pipe.take()


def stream_zip(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[call-overload]
        for f in files:
            info = zipfile.ZipInfo(f.path, date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = f.size
            entry: IO[bytes]
            with archive.open(info, mode="w", force_zip64=f.size >= 2**31) as entry:
                for chunk in read(f.sha256):
                    entry.write(chunk)
                    yield pipe.take()
        yield pipe.take()
    yield pipe.take()
