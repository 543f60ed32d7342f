"""Direct I/O (``O_DIRECT``) for large files: the local blob store's uploads and the client's downloads.

Parts of a large upload are written, and read back for hashing, around the page cache: from aligned
buffers straight to the disk and back. Measured on the 2-core VM of docs/benchmarks.md, 2 GiB written
in 8 MiB pieces and fdatasynced took 0.1 s of CPU at 920-1,400 MB/s with ``O_DIRECT``, against 5.3-8.4 s
of CPU at 220-320 MB/s through the page cache (copying into fresh page-cache pages is what costs; every
large write pays it, and it was half the server's CPU in an upload). The SDK's downloads of large
files paid it too. MinIO writes large objects with ``O_DIRECT`` for the same reasons.

A direct write waits for the disk, and the size of each write counted on a slower VM disk
(300-500 MB/s): 2 GiB written three pieces at a time went at 273-310 MB/s in 4 MiB pieces and at
372-427 MB/s in 8 MiB pieces (interleaved runs), and a 2 GiB upload took 6.3 s on average instead of
7.1 s (8 alternating pairs). Hence 8 MiB (docs/benchmarks.md: "Later on 2026-12-07, a slower
machine").

Direct I/O needs the buffer, the file offset and the length aligned to the device's block size; the
unaligned ends of a range go through the page cache instead. Where a file system refuses
``O_DIRECT`` (EINVAL at open), everything goes through the page cache as before.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks
CHUNK = 8 * 1024 * 1024  # one direct read or write
_O_DIRECT = getattr(os, "O_DIRECT", 0)

# pwrite(fd, view, offset) -> bytes written; the store passes one that takes its locks and checks.
Pwrite = Callable[[int, memoryview, int], int]


def open_direct(path: str | os.PathLike[str], flags: int) -> int | None:
    """A file descriptor opened with ``O_DIRECT`` added, or None where the system or the file system
    does not offer it."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(path, flags | _O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


class Buffers:
    """Aligned buffers of CHUNK bytes (anonymous maps), kept for reuse: touching fresh memory costs
    more than copying into warm memory."""

    def __init__(self, keep: int = 8):  # 64 MiB kept idle at most
        self._free: list[mmap.mmap] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, CHUNK)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)
                return
        with contextlib.suppress(BufferError):  # a view of it still exists: freed with the last one
            buf.close()


class RangeWriter:
    """Writes the bytes of ``[offset, offset + size)`` of one file as they come, in any pieces, and
    hashes them into ``digest`` (when given) in order.

    The aligned middle is gathered into aligned buffers; each full buffer is written with
    ``O_DIRECT`` on an I/O thread and hashed on a thread of this writer's own, while the next buffer
    fills (at most IN_FLIGHT buffers at once), so receiving, hashing and writing overlap. The
    unaligned ends go through the page cache. ``pwrite`` does every write (the store's, which takes
    its locks). Without a direct descriptor every piece is written through the page cache, and
    hashed, as it comes.
    """

    IN_FLIGHT = 3

    def __init__(
        self,
        fd: int,
        direct_fd: int | None,
        offset: int,
        size: int,
        pwrite: Pwrite,
        digest: hashlib._Hash | None = None,
    ):
        self.fd, self.direct_fd = fd, direct_fd
        self.pos = offset  # file offset of the next byte
        self.pwrite = pwrite
        self.buffers, self.io = BUFFERS, io_pool()
        self.digest = digest
        # One thread per writer hashes the pieces in the order they were handed to it.
        self.hasher = ThreadPoolExecutor(1, "hash") if digest is not None and direct_fd is not None else None
        self.lo = -(-offset // ALIGN) * ALIGN  # the direct middle: [lo, hi)
        self.hi = max(self.lo, (offset + size) // ALIGN * ALIGN)
        self.buf: mmap.mmap | None = None
        self.filled = 0  # bytes in buf, which start at file offset pos - filled
        self.scratch: mmap.mmap | None = None  # receive()'s buffer for what is not written directly
        self.flying: collections.deque[tuple[list[Future[None]], mmap.mmap]] = collections.deque()

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            if self.direct_fd is None or self.pos >= self.hi or self.pos < self.lo:
                # Through the page cache: no direct I/O, or the unaligned head or tail.
                n = min(len(view), self.lo - self.pos) if self.pos < self.lo else len(view)
                if self.direct_fd is not None and self.flying:
                    self._land_all()  # the tail: after the middle, so that it is hashed after it
                self._write_all(self.fd, view[:n], self.pos)
                self._hash(view[:n])
                self.pos += n
                view = view[n:]
                continue
            if self.buf is None:
                self.buf, self.filled = self.buffers.take(), 0
            n = min(len(view), CHUNK - self.filled, self.hi - self.pos)
            self.buf[self.filled : self.filled + n] = view[:n]
            self.filled += n
            self.pos += n
            view = view[n:]
            if self.filled == CHUNK or self.pos == self.hi:
                self._flush()

    def receive(self, readinto: Callable[[memoryview], int], limit: int) -> memoryview:
        """Read at most ``limit`` bytes with ``readinto`` straight into the buffer they are written
        from, and write them (as ``write`` does, without copying the bytes); return a view of them,
        valid until the next call (empty at the end of the source)."""
        if self.direct_fd is None or not self.lo <= self.pos < self.hi:
            if self.scratch is None:
                self.scratch = self.buffers.take()
            n = min(
                limit,
                CHUNK,
                self.lo - self.pos if self.direct_fd is not None and self.pos < self.lo else CHUNK,
            )
            with memoryview(self.scratch) as whole:
                got = readinto(whole[:n])
            view = memoryview(self.scratch)[:got]
            self.write(view)
            return view
        if self.buf is None:
            self.buf, self.filled = self.buffers.take(), 0
        n = min(limit, CHUNK - self.filled, self.hi - self.pos)
        view = memoryview(self.buf)[self.filled : self.filled + n]
        got = readinto(view)
        view = view[:got]
        self.filled += got
        self.pos += got
        if got and (self.filled == CHUNK or self.pos == self.hi):
            self._flush()  # the bytes stay where they are until the write and the hash are done
        return view

    def close(self) -> None:
        """Write what is buffered, wait for the writes and hashing in flight (re-raising their
        error) and return the buffers."""
        try:
            if self.buf is not None and self.filled:
                self._flush()
            self._land_all()
        finally:
            self._give_back()

    def abort(self) -> None:
        """Drop what is buffered and wait for the work in flight, ignoring its errors (the one that
        aborted matters)."""
        try:
            with contextlib.suppress(Exception):
                self._land_all()
        finally:
            self._give_back()

    def _give_back(self) -> None:
        if self.buf is not None:
            self.buffers.give(self.buf)
            self.buf = None
        if self.scratch is not None:
            self.buffers.give(self.scratch)
            self.scratch = None
        if self.hasher is not None:
            self.hasher.shutdown(wait=True)

    def _hash(self, view: memoryview) -> None:
        if self.digest is None:
            return
        if self.hasher is None:
            self.digest.update(view)
        else:  # after the buffers handed to the hashing thread before it (and done before view goes)
            self.hasher.submit(self.digest.update, view).result()

    def _flush(self) -> None:
        assert self.buf is not None and self.direct_fd is not None
        if len(self.flying) >= self.IN_FLIGHT:
            self._land_one()
        buf, start, length = self.buf, self.pos - self.filled, self.filled
        self.buf = None
        work = [self.io.submit(self._write_direct, buf, start, length)]
        if self.hasher is not None and self.digest is not None:
            work.append(self.hasher.submit(self._hash_buffer, buf, length))
        self.flying.append((work, buf))

    def _hash_buffer(self, buf: mmap.mmap, length: int) -> None:
        assert self.digest is not None
        with memoryview(buf) as whole:
            self.digest.update(whole[:length])

    def _land_one(self) -> None:
        work, buf = self.flying.popleft()
        try:
            for future in work:
                future.result()
        finally:
            for future in work:  # the buffer is free only once nothing uses it
                with contextlib.suppress(Exception):
                    future.result()
            self.buffers.give(buf)

    def _land_all(self) -> None:
        while self.flying:
            self._land_one()

    def _write_direct(self, buf: mmap.mmap, start: int, length: int) -> None:
        with memoryview(buf) as whole:
            write_at(self.fd, self.direct_fd, whole[:length], start, self.pwrite)

    def _write_all(self, fd: int, view: memoryview, pos: int) -> None:
        write_at(fd, None, view, pos, self.pwrite)


def write_at(
    fd: int, direct_fd: int | None, view: memoryview, offset: int, pwrite: Pwrite = os.pwrite
) -> None:
    """Write ``view`` at ``offset``: its whole blocks with ``direct_fd`` when there is one and both the
    offset and the view's memory are aligned (an anonymous map's are), the rest through ``fd``."""
    done = 0
    if direct_fd is not None and offset % ALIGN == 0:
        whole = len(view) // ALIGN * ALIGN
        while done < whole:
            n = pwrite(direct_fd, view[done:whole], offset + done)
            done += n
            if n % ALIGN:
                break  # a short, unaligned write (near a full disk): the rest through the page cache
    while done < len(view):
        done += pwrite(fd, view[done:], offset + done)


BUFFERS = Buffers()
_io: ThreadPoolExecutor | None = None
_io_lock = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """The threads that do the direct reads and writes (they release the GIL while they wait)."""
    global _io
    with _io_lock:
        if _io is None:
            _io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="direct-io")
        return _io


def read_range(path: str | os.PathLike[str], start: int, length: int) -> Iterator[memoryview]:
    """The bytes ``[start, start + length)`` of a file, read around the page cache where possible,
    the next piece read on an I/O thread while the caller uses this one. Each view is valid until the
    next is asked for. Stops early at the end of the file."""
    direct = open_direct(path, os.O_RDONLY)
    fd = direct if direct is not None else os.open(path, os.O_RDONLY)
    first = start // ALIGN * ALIGN if direct is not None else start
    end = start + length
    buffers, io = BUFFERS, io_pool()
    bufs = [buffers.take(), buffers.take()]

    def read(buf: mmap.mmap, pos: int) -> int:
        with memoryview(buf) as whole:
            return os.preadv(fd, [whole[: _want(pos, end, direct is not None)]], pos)

    try:
        pos, turn, pending = first, 0, None
        if pos < end:
            pending = io.submit(read, bufs[0], pos)
        while pending is not None:
            want = _want(pos, end, direct is not None)
            got = pending.result()
            pending = None
            nxt = pos + got
            if got == want and nxt < end:  # a short read is the end of the file
                pending = io.submit(read, bufs[1 - turn], nxt)
            lo, hi = max(start, pos) - pos, min(end, nxt) - pos
            if hi > lo:
                view = memoryview(bufs[turn])[lo:hi]
                try:
                    yield view
                finally:
                    view.release()
            pos, turn = nxt, 1 - turn
    finally:
        if pending is not None:
            with contextlib.suppress(OSError):
                pending.result()  # the read in flight must end before its buffer is reused
        os.close(fd)
        for buf in bufs:
            buffers.give(buf)


def _want(pos: int, end: int, direct: bool) -> int:
    """Bytes to read at ``pos``: a CHUNK at most, rounded up to whole blocks for direct I/O."""
    return min(CHUNK, -(-(end - pos) // ALIGN) * ALIGN) if direct else min(CHUNK, end - pos)
