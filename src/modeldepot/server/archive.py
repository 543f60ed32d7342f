"""A whole model as one zip or tar stream, built while it is sent (no temporary files).

Both formats go out a chunk at a time (the blob store's 1 MiB reads), so a server holds a few MiB
per archive whatever the size of the files. Every file's bytes are checked against the model's
record of it (size and sha256) as they are read, which costs nothing more: the bytes are read anyway.

- Before the answer starts, :func:`first_damaged` looks up the size of every blob, so a missing or
  truncated one gives a problem+json error instead of a 200.
- While it streams, the last chunk of each file is held back until its size and sha256 are checked.
  On a mismatch the server logs which blob is damaged and :class:`ArchiveResponse` ends the answer
  without its end: the connection closes with the file unfinished and the archive without its end
  (zip: the entry's data descriptor and the central directory; tar: the end of the entry and the
  end-of-archive blocks), so neither HTTP nor the archive reader can take it for a whole archive.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, NoReturn

from starlette.responses import StreamingResponse
from starlette.types import Send

from ..records import ModelFile

Reader = Callable[[str], Iterator[bytes]]

log = logging.getLogger("modeldepot.server")

# Pieces smaller than this (headers, small files) are sent together; a 1 MiB read goes out as is.
FLUSH_AT = 256 * 1024
# Blob sizes looked up at once before an archive starts, in an object store (a HEAD request each).
LOOKUPS = 8
# Every entry is a regular file readable by all, writable by its owner (-rw-r--r--), in both formats.
# Archives hold no directory entries: readers make a file's directories as they extract it.
FILE_MODE = 0o644


class ArchiveAborted(Exception):
    """A file of the archive does not match the model's record of it (logged where it is raised)."""


class ArchiveResponse(StreamingResponse):
    """A StreamingResponse that, when its archive is aborted, ends without the end of its body: the
    server then closes the connection, and the client sees a cut-off transfer, not a short archive.
    (Raising instead would do the same but log the error three times, as unexpected.)"""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except ArchiveAborted:
            return


def first_damaged(
    files: Iterable[ModelFile], size: Callable[[str], int | None], *, remote: bool
) -> tuple[ModelFile, str] | None:
    """The first file whose blob is missing or of another size than recorded, and what is wrong with
    it; None when every blob is there (its bytes are checked as they are sent).

    ``remote``: each ``size`` is a request (an object store), so several are made at once; a local
    store's is a stat, which threads would only slow down (250 files: 1 ms alone, 19 ms with 8 threads).
    """
    unique = list({f.sha256: f for f in files}.values())
    if not remote or len(unique) <= 1:
        sizes = [size(f.sha256) for f in unique]
    else:
        with ThreadPoolExecutor(max_workers=LOOKUPS) as pool:
            sizes = list(pool.map(size, [f.sha256 for f in unique]))
    for f, have in zip(unique, sizes, strict=True):
        if have is None:
            return f, "is missing from the blob store"
        if have != f.size:
            return f, f"has {have} bytes, not {f.size}"
    return None


def _checked(f: ModelFile, read: Reader) -> Iterator[bytes]:
    """The bytes of ``f``, checked against its size and sha256; the last chunk only once they match."""
    digest = hashlib.sha256()
    got = 0
    held: bytes | None = None
    try:
        for chunk in read(f.sha256):
            got += len(chunk)
            if got > f.size:
                break
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
    except FileNotFoundError:
        _abort(f, "is missing from the blob store")
    if got != f.size:
        _abort(f, f"has {'more than ' if got > f.size else ''}{got} bytes, not {f.size}")
    if digest.hexdigest() != f.sha256:
        _abort(f, f"has sha256 {digest.hexdigest()}")
    if held is not None:
        yield held


def _abort(f: ModelFile, what: str) -> NoReturn:
    log.error(
        "archive cut off: blob %s (file %r) %s; its bytes are damaged in the blob store. "
        "Run `modeldepot fsck` to find every damaged blob.",
        f.sha256,
        f.path,
        what,
    )
    raise ArchiveAborted(f"blob {f.sha256} {what}")


def _batched(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Pieces sent together until they reach FLUSH_AT: one send for many small files."""
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        if not piece:
            continue
        pending.append(piece)
        size += len(piece)
        if size >= FLUSH_AT:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield b"".join(pending)


def stream_tar(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    return _batched(_tar_pieces(files, read))


def _tar_pieces(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    """What ``tarfile.open(mode="w|", format=PAX_FORMAT)`` writes for these files, but each file's
    bytes as they are read: tarfile's ``addfile`` copies a whole file before it returns."""
    now = int(time.time())
    offset = 0
    for f in files:
        info = tarfile.TarInfo(f.path)
        info.size, info.mtime, info.mode = f.size, now, FILE_MODE
        header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        yield header
        yield from _checked(f, read)
        padding = -f.size % tarfile.BLOCKSIZE
        yield tarfile.NUL * padding
        offset += len(header) + f.size + padding
    end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker, then to a whole record
    offset += len(end)
    yield end + tarfile.NUL * (-offset % tarfile.RECORDSIZE)


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
        out = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces.clear()
        return out


def stream_zip(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    return _batched(_zip_pieces(files, read))


def _zip_pieces(files: list[ModelFile], read: Reader) -> Iterator[bytes]:
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[call-overload]
        for f in files:
            info = zipfile.ZipInfo(f.path, date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = f.size
            # Unix type and mode, as tar has them; without them zipfile writes ?rw------- (0600, no type).
            info.create_system = 3  # Unix, whatever the server's system: the mode below is a Unix one
            info.external_attr = (stat.S_IFREG | FILE_MODE) << 16
            entry: IO[bytes]
            # On an abort, leaving these blocks writes the entry's end and the central directory
            # into the pipe, which is never sent.
            with archive.open(info, mode="w", force_zip64=f.size >= 2**31) as entry:
                for chunk in _checked(f, read):
                    entry.write(chunk)
                    yield pipe.take()
        yield pipe.take()
    yield pipe.take()
