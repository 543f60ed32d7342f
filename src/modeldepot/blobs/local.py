"""Blobs in a local directory: ``sha256/ab/<hash>``, written through a temp file and renamed.

(Stores made before the ``LAYOUT`` file keep ``sha256/ab/cd/<hash>``; that file, at the root, says which.
One level of 256 folders means a young store rarely makes a folder for a new blob; with two levels
it made one for nearly every blob of its first tens of thousands, each an inode to allocate: 2,000
small files took 0.44-0.75 s instead of 0.35 s to store here.)

Large uploads arrive in parts, possibly in parallel and over several attempts: each staging area is
one preallocated file (``staging/<id>/data``) that parts are written into at their offsets, with a
marker file per received part (``staging/<id>/parts/<n>``, holding its size), so a restarted server
still knows what it has. Finishing hashes the whole file and renames it into place.

Batches of small blobs (``commit_batch``) of at least ``SYNCFS_MIN_BLOBS`` are put on disk with one
``syncfs(2)`` of the file system instead of one fsync per file, on Linux; see commit_batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import os
import secrets
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Protocol

from .. import directio
from ..errors import IntegrityError, InvalidInput, StorageFull
from ..services.ports import BlobWriter

SYNC_THREADS = 8
# Batches of at least this many blobs are written back with syncfs(2) rather than one fsync per file
# (see LocalBlobStore.commit_batch); smaller ones keep the per-file fsyncs.
SYNCFS_MIN_BLOBS = 16
LAYOUT_FILE = "LAYOUT"
FLAT = "sha256/ab/<sha256>"
NESTED = "sha256/ab/cd/<sha256>"
TMP_FOLDERS = 16

PublishGuard = Callable[[str, int], AbstractContextManager[None]]


# The file in the store's folder that names the metadata database using it (see marker_location).
MARKER = "store-id"


class Presigner(Protocol):
    """Signs URLs that move this store's bytes without the API server (the data plane)."""

    def part_url(self, staging_id: str, number: int, offset: int, size: int, expires_in: int) -> str: ...
    def get_url(self, sha256: str, filename: str, expires_in: int) -> str: ...


class LocalBlobWriter:
    def __init__(self, store: LocalBlobStore):
        self._store = store
        # Like tempfile.mkstemp, for a fraction of its cost (it matters with thousands of small files).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        folder = store.tmp_folder()
        while True:
            self.tmp = folder / f"upload-{store.tmp_prefix}-{next(store.tmp_counter)}"
            try:
                fd = os.open(self.tmp, flags, 0o600)
                break
            except FileExistsError:  # another process's store on the same directory: next number
                continue
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            # A write may be short (a nearly full disk, a file size limit): the rest is written
            # again, which either lands or fails; bytes not on disk must never be counted as stored.
            view = memoryview(chunk).cast("B")
            while view:
                view = view[self._file.write(view) :]
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise StorageFull(
                    "The blob store's disk is full", hint="Free space on the disk of the blob directory."
                ) from exc
            raise
        self._hash.update(chunk)
        self.size += len(chunk)

    def check(self, expected_sha256: str, expected_size: int) -> None:
        """Raise (and discard the bytes) unless they are the blob announced."""
        digest = self._hash.hexdigest()
        if digest != expected_sha256 or self.size != expected_size:
            self.abort()
            raise IntegrityError(
                f"Received {self.size} bytes with sha256 {digest}, expected {expected_size} bytes "
                f"with sha256 {expected_sha256}; the bytes were discarded",
                hint="The file changed or was corrupted in transit: upload it again.",
            )

    def sync(self, *, data_only: bool = False) -> None:
        """Put the bytes on disk and close the file; ``data_only``: fdatasync (which also reports a
        writeback error of the file, such as one met by a syncfs before it)."""
        try:
            if data_only:
                os.fdatasync(self._file.fileno())
            else:
                os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def commit(self, expected_sha256: str, expected_size: int) -> None:
        self.check(expected_sha256, expected_size)
        self.sync()
        self._store.publish(self.tmp, expected_sha256, self.size)

    def commit_computed(self) -> tuple[str, int]:
        """Keep the bytes under the sha256 computed while they were written; return (sha256, size)."""
        digest, size = self._hash.hexdigest(), self.size
        self.commit(digest, size)
        return digest, size

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


class _HashAhead:
    """The running sha256 of a staging area's leading parts (see LocalBlobStore._hash_ahead)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.hashed = 0  # bytes hashed, from the start
        self.next_part = 1
        self.valid = True
        self.cond = threading.Condition()
        self.running = False  # a hashing thread is at work
        self.again = False  # a part arrived while it was: look once more before stopping
        self.closed = False  # finishing took over
        self.inline: int | None = None  # the part being hashed as it arrives
        self.inline_size = 0
        self.writing: dict[int, int] = {}  # part number -> requests writing it now

    def begin(self, number: int, offset: int, size: int) -> hashlib._Hash | None:
        """A part starts arriving. Returns a copy of the running hash to hash it into as it arrives
        when every part before it is hashed and nothing else is hashing; None otherwise."""
        with self.cond:
            self.writing[number] = self.writing.get(number, 0) + 1
            if self.writing[number] > 1:
                self.valid = False  # the same part twice at once: its bytes on disk are anyone's
            if (
                self.valid
                and not self.closed
                and not self.running
                and self.inline is None
                and self.next_part == number
                and self.hashed == offset
            ):
                self.inline, self.inline_size = number, size
                return self.digest.copy()
        return None

    def end(self, number: int, claimed: bool, digest: hashlib._Hash | None) -> None:
        """A part stopped arriving. ``claimed``: ``begin`` gave it the running hash; ``digest``: its
        hash, when it was hashed as it arrived and is now stored whole (None when it failed)."""
        with self.cond:
            self.writing[number] -= 1
            if not self.writing[number]:
                del self.writing[number]
            if claimed:
                self.inline = None
                if digest is not None and self.valid and not self.closed:
                    self.digest = digest
                    self.hashed += self.inline_size
                    self.next_part += 1
                    return
            if number < self.next_part:
                self.valid = False  # hashed (from disk) while it was being written


def _no_guard(sha256: str, size: int) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _no_guard_many(blobs: Sequence[tuple[str, int]]) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike[str], guard: PublishGuard = _no_guard):
        self.root = Path(root)
        self._ahead: dict[str, _HashAhead] = {}
        self._ahead_lock = threading.Lock()
        # One writer at a time per staging file: the kernel serializes writes to one file anyway (the
        # inode lock), and threads that wait for it there spin, burning CPU (measured: 12% of the
        # server's CPU for a 2 GiB upload in four parallel parts); here they sleep.
        self._write_locks: dict[str, threading.RLock] = {}
        # Held while a blob is moved into place; the server sets it to the metadata store's row lock
        # so that the garbage collector can never delete a blob in the instant it is re-published.
        self.guard = guard
        self.guard_many: Callable[[Sequence[tuple[str, int]]], AbstractContextManager[None]] = _no_guard_many
        # Set when a data plane serves this store (``modeldepot serve`` starts one): large transfers
        # then get signed URLs to it instead of going through the API.
        self.presigner: Presigner | None = None
        self.presign_min_size = 4 * 1024 * 1024
        # Parts of large uploads are written and read back around the page cache (see directio.py),
        # where the file system allows it; off, everything goes through the page cache.
        self.direct_io = True
        # The store hashes a part as it arrives when the parts before it are hashed: a client does
        # best to send a blob's parts one after the other.
        self.parts_in_order = True
        # Names of temporary files: random per store, then counted (O_EXCL still guards against a clash);
        # a random name each would cost a getrandom call per file, which shows with thousands of them.
        self.tmp_prefix = secrets.token_hex(6)
        self.tmp_counter = itertools.count()
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Each thread makes its temporary files in a folder of its own: threads creating files in
        # one folder at once queue on the folder's lock, and spin there (perf: 13% of the server's
        # CPU for 2,000 small files in four parallel batches).
        self._tmp_threads = itertools.count()
        self._tmp_thread = threading.local()
        (self.root / "sha256").mkdir(exist_ok=True)
        self.layout = self._layout()
        self._nested = self.layout == NESTED

    def _layout(self) -> str:
        """The store's blob layout, from its ``LAYOUT`` file; written on first use (a store that holds
        blobs but no such file is from before it, and nested)."""
        marker = self.root / LAYOUT_FILE
        try:
            found = marker.read_text().strip()
        except FileNotFoundError:
            legacy = any(True for _ in (self.root / "sha256").glob("*/*/*"))
            tmp = self.tmp_dir / f"layout-{self.tmp_prefix}"
            tmp.write_text((NESTED if legacy else FLAT) + "\n")
            try:
                os.link(tmp, marker)  # never replaces one another process wrote meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            found = marker.read_text().strip()
        if found not in (FLAT, NESTED):
            raise ValueError(
                f"{marker} says the blob layout is {found!r}; this version knows {FLAT!r} and {NESTED!r}"
            )
        return found

    def tmp_folder(self) -> Path:
        """This thread's folder for temporary files (the k-th thread to ask gets folder k mod 16)."""
        folder: Path | None = getattr(self._tmp_thread, "folder", None)
        if folder is None:
            with self._ahead_lock:
                number = next(self._tmp_threads) % TMP_FOLDERS
            folder = self.tmp_dir / f"t{number}"
            folder.mkdir(exist_ok=True)
            self._tmp_thread.folder = folder
        return folder

    def _path(self, sha256: str) -> Path:
        if self._nested:
            return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256
        return self.root / "sha256" / sha256[:2] / sha256

    def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def check(self) -> None:
        """Nothing to check: the folders were made (or failed to be) when the store opened."""

    def marker_location(self) -> str:
        return str(self.root / MARKER)

    def read_marker(self) -> str | None:
        try:
            return (self.root / MARKER).read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_marker(self, value: str) -> None:
        """Written through a temporary file and renamed, so that it is whole or absent."""
        tmp = self.root / f".{MARKER}.{secrets.token_hex(6)}"
        with open(tmp, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / MARKER)
        _fsync_dir(self.root)

    def completed_size(self, staging_id: str) -> int | None:
        """None: a local staging area is finished in one step (see the S3 store's)."""
        return None

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def commit_batch(self, batch: Sequence[tuple[BlobWriter, str, int]]) -> list[str]:
        """Commit many written blobs at once; the sha256 of those kept (the others failed their check
        and were discarded).

        Cheaper per blob than one commit each: the files are put on disk once all are written, moved
        into place under one guard (one metadata transaction), then the renames are put on disk, after
        the guard. A batch of ``SYNCFS_MIN_BLOBS`` or more does both with a ``syncfs(2)`` of the file
        system (each file is then fdatasynced, which is cheap once it is clean and reports its own
        writeback errors); a smaller one, or where syncfs is missing, fsyncs each file (several
        threads at once share journal commits) and then each folder a blob moved into.
        """
        good: list[tuple[LocalBlobWriter, str, int]] = []
        for writer, sha256, size in batch:
            assert isinstance(writer, LocalBlobWriter)
            try:
                writer.check(sha256, size)
            except IntegrityError:
                continue
            good.append((writer, sha256, size))
        writers = [writer for writer, _, _ in good]
        # syncfs(2) instead of one fsync per file, for a batch large enough: measured here (ext4,
        # 2 cores) for 2,000 small files, fsyncs from 8 threads took 0.45-0.58 s and 0.5-0.6 s of CPU,
        # one syncfs 0.15-0.25 s and about half the CPU, and an fdatasync of each (now clean) file
        # after it only ~0.13 s more. The trade-off: syncfs writes back every dirty page of the file
        # system, so on a disk shared with other heavy writers it also waits for their data; that is
        # why small batches keep the per-file fsyncs.
        fs_fd: int | None = None
        try:
            # fsync waits for the disk and releases the GIL: several at once share journal commits.
            # (The pool starts its threads on first use: none on the syncfs path.)
            with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
                if len(writers) >= SYNCFS_MIN_BLOBS and _libc_syncfs() is not None:
                    # Opened before the renames, so the syncfs after them reports errors since then.
                    fs_fd = os.open(self.tmp_dir, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    if _syncfs_if_available(fs_fd):
                        # syncfs reports writeback errors only since fs_fd was opened (and none before
                        # Linux 5.8); each file's fdatasync reports its own since it was opened.
                        for writer in writers:
                            writer.sync(data_only=True)
                    else:
                        unused, fs_fd = fs_fd, None
                        os.close(unused)
                if fs_fd is None:
                    list(pool.map(LocalBlobWriter.sync, writers))
                moved: set[Path] = set()
                with self.guard_many([(sha256, size) for _, sha256, size in good]):
                    for writer, sha256, _ in good:
                        final = self._path(sha256)
                        try:
                            os.replace(writer.tmp, final)
                        except FileNotFoundError:
                            final.parent.mkdir(parents=True, exist_ok=True)
                            os.replace(writer.tmp, final)
                        moved.add(final.parent)
                # After the guard: it is the metadata store's write lock with SQLite, and other
                # batches need it. A crash before these fsyncs can lose a rename whose row committed;
                # the blob is not yet ticked off for its upload (that comes after), so the upload sends
                # it again, and any other model naming it found it stored before (the same bytes).
                if fs_fd is None or not _syncfs_if_available(fs_fd):
                    list(pool.map(_fsync_dir, moved))
        except BaseException as exc:
            for writer in writers:
                writer.abort()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Delayed allocation: a full disk often shows only when the bytes are written back.
                raise StorageFull(
                    "The blob store's disk is full", hint="Free space on the disk of the blob directory."
                ) from exc
            raise
        finally:
            if fs_fd is not None:
                os.close(fs_fd)
        return [sha256 for _, sha256, _ in good]

    def local_path(self, sha256: str) -> Path | None:
        path = self._path(sha256)
        return path if path.exists() else None

    def read(
        self, sha256: str, chunk_size: int = 1024 * 1024, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The blob's bytes from ``start`` up to (not including) ``end``."""
        with self._path(sha256).open("rb") as f:
            f.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = f.read(chunk_size if left is None else min(chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def location(self) -> str:
        return self.root.resolve().as_uri()

    def has_blobs(self) -> bool:
        """Whether any blob is stored (stops at the first)."""
        return next((self.root / "sha256").glob("*/*/*" if self._nested else "*/*"), None) is not None

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """Every stored blob as (sha256, size)."""
        for path in sorted((self.root / "sha256").glob("*/*/*" if self._nested else "*/*")):
            if len(path.name) == 64:
                yield path.name, path.stat().st_size

    def presign_get(self, sha256: str, expires_in: int, filename: str, size: int | None = None) -> str | None:
        if self.presigner is None:
            return None  # the API serves local blobs itself
        return self.presigner.get_url(sha256, filename, expires_in)

    def publish(self, tmp: Path, sha256: str, size: int) -> None:
        """Move a verified, fsynced file into place as blob ``sha256`` (under the publish guard)."""
        final = self._path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self.guard(sha256, size):
            os.replace(tmp, final)
            _fsync_dir(final.parent)

    # -- staging: blobs that arrive in parts ---------------------------------------------------------

    def _staging(self, staging_id: str) -> Path:
        if not staging_id.isalnum():
            raise ValueError(f"bad staging id {staging_id!r}")
        return self.root / "staging" / staging_id

    def begin_staging(self, size: int) -> str:
        staging_id = secrets.token_hex(12)
        area = self._staging(staging_id)
        (area / "parts").mkdir(parents=True)
        try:
            # Readable by the server alone, as whole blobs are (their temporary files are 0600).
            fd = os.open(
                area / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
            )
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            shutil.rmtree(area, ignore_errors=True)
            if exc.errno == errno.EFBIG:
                raise InvalidInput(
                    f"A file of {size} bytes is larger than the blob store's file system can hold"
                ) from None
            raise
        return staging_id

    def presign_part(
        self, staging_id: str, number: int, expires_in: int, *, offset: int, size: int
    ) -> str | None:
        if self.presigner is None:
            return None  # parts go through the API
        self._staging(staging_id)  # a well-formed id
        return self.presigner.part_url(staging_id, number, offset, size, expires_in)

    def write_part(
        self,
        staging_id: str,
        number: int,
        offset: int,
        size: int,
        chunks: Iterable[bytes | memoryview],
        sha256: str | None,
    ) -> None:
        """Write part ``number`` at ``offset``; its size (and sha256, when given) must match.

        The part is hashed into the area's running sha256 as it arrives when every part before it has
        been hashed already (parts sent one after the other, see ``parts_in_order``); finishing then
        reads nothing back.
        """

        def feed(writer: directio.RangeWriter) -> Iterator[bytes | memoryview]:
            got = 0
            for chunk in chunks:
                if got + len(chunk) > size:
                    raise IntegrityError(f"Part {number} is larger than its {size} bytes")
                writer.write(chunk)
                got += len(chunk)
                yield chunk

        self._write_part(staging_id, number, offset, size, feed, sha256)

    def receive_part(
        self,
        staging_id: str,
        number: int,
        offset: int,
        size: int,
        readinto: Callable[[memoryview], int],
        sha256: str | None,
    ) -> None:
        """``write_part`` from a source read with ``readinto`` (a socket's), straight into the buffers
        the part is written from: the data plane's way, one copy of each byte fewer."""

        def feed(writer: directio.RangeWriter) -> Iterator[memoryview]:
            left = size
            while left and (view := writer.receive(readinto, left)):
                left -= len(view)
                yield view

        self._write_part(staging_id, number, offset, size, feed, sha256)

    def _write_part(
        self,
        staging_id: str,
        number: int,
        offset: int,
        size: int,
        feed: Callable[[directio.RangeWriter], Iterator[bytes | memoryview]],
        sha256: str | None,
    ) -> None:
        area = self._staging(staging_id)
        with self._ahead_lock:
            state = self._ahead.setdefault(staging_id, _HashAhead())
        write_lock = self._write_lock(staging_id)
        if number <= state.next_part and (area / "parts" / str(number)).exists():
            state.valid = False  # a part sent again may be hashed (or being hashed) with its old bytes
        digest = hashlib.sha256() if sha256 is not None else None
        inline = state.begin(number, offset, size)
        claimed = inline is not None
        got = 0
        gone = IntegrityError(f"Upload staging area {staging_id} no longer exists")
        try:
            fd = os.open(area / "data", os.O_WRONLY)
        except FileNotFoundError:
            state.end(number, claimed, None)
            with self._ahead_lock:  # no state left behind for an area that is gone
                if self._ahead.get(staging_id) is state and not state.writing:
                    del self._ahead[staging_id]
                self._write_locks.pop(staging_id, None)
            raise gone from None
        direct_fd = directio.open_direct(area / "data", os.O_WRONLY) if self.direct_io else None
        try:
            inode = os.fstat(fd).st_ino

            def still_staged() -> None:
                """Under the write lock: the area was not finished (its file published) or removed
                since this part opened it; no byte may land in a blob that was verified."""
                try:
                    if os.stat(area / "data").st_ino == inode:
                        return
                except FileNotFoundError:
                    pass
                raise gone

            def pwrite(target: int, view: memoryview, at: int) -> int:
                with write_lock:
                    still_staged()
                    try:
                        return os.pwrite(target, view, at)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            raise StorageFull("The blob store's disk is full") from exc
                        raise

            # The writer hashes the part into the running hash as it goes (on a thread of its own).
            writer = directio.RangeWriter(fd, direct_fd, offset, size, pwrite, digest=inline)
            try:
                for chunk in feed(writer):  # each piece written (and hashed) as it comes
                    got += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                if got != size:
                    raise IntegrityError(f"Part {number} has {got} bytes, expected {size}; send it again")
                writer.close()
            except BaseException:
                writer.abort()
                raise
            if digest is not None and digest.hexdigest() != sha256:
                raise IntegrityError(f"Part {number} arrived corrupted (sha256 mismatch); send it again")
            # On disk before it counts as received: a part that survives a crash is whole.
            os.fdatasync(fd)
            with write_lock:  # not while the area is finished or removed: no marker outlives it
                still_staged()
                (area / "parts" / str(number)).write_text(str(size))
        except BaseException:
            inline = None
            raise
        finally:
            if direct_fd is not None:
                os.close(direct_fd)
            os.close(fd)
            state.end(number, claimed, inline)
        self._hash_ahead(staging_id, state)

    def _hash_ahead(self, staging_id: str, state: _HashAhead) -> None:
        """Hash the parts that now follow each other from the start, as they land.

        Parts may arrive out of order; a thread of the staging area's own follows them in order,
        reading back those that were not hashed as they arrived, so that the request that sent a part
        is answered at once and finishing only has to hash what is left. The running hash lives in
        this process: after a restart, or if a part already hashed is sent again, finishing simply
        reads everything.
        """
        with state.cond:
            if state.closed or not state.valid or state.inline is not None:
                return  # the part being hashed as it arrives starts the thread when it is done
            if state.running:
                state.again = True
                return
            if not (self._staging(staging_id) / "parts" / str(state.next_part)).exists():
                # Nothing to read yet (the request that stores that part comes here again). No thread
                # then, so that the next part, which may begin any moment, is hashed as it arrives.
                return
            state.running = True
        threading.Thread(target=self._hash_loop, args=(staging_id, state), daemon=True).start()

    def _hash_loop(self, staging_id: str, state: _HashAhead) -> None:
        area = self._staging(staging_id)
        try:
            while True:
                try:
                    size = int((area / "parts" / str(state.next_part)).read_text() or -1)
                except (FileNotFoundError, ValueError):
                    size = -1
                if size >= 0:
                    end = state.hashed + size
                    for view in directio.read_range(area / "data", state.hashed, size):
                        if state.closed or not state.valid:
                            return  # finishing goes on from state.hashed
                        state.digest.update(view)
                        state.hashed += len(view)
                    if state.hashed != end:
                        return  # the data file is shorter than its parts: finishing will say so
                    state.next_part += 1
                    continue
                with state.cond:
                    if not state.again or state.closed or not state.valid:
                        return
                    state.again = False
        except FileNotFoundError:
            return  # aborted meanwhile
        finally:
            with state.cond:
                state.running = False
                state.cond.notify_all()

    def received_parts(self, staging_id: str) -> dict[int, int]:
        area = self._staging(staging_id) / "parts"
        try:
            return {int(p.name): int(p.read_text() or 0) for p in area.iterdir() if p.name.isdigit()}
        except FileNotFoundError:
            return {}

    def finish_staging(self, staging_id: str, sha256: str, size: int) -> None:
        """Hash the assembled file; if it is the blob announced, fsync it and publish it.

        The area's write lock is held throughout: a part sent again meanwhile could otherwise land
        after the check, in a blob other models share. It then finds the area gone."""
        with self._write_lock(staging_id):
            self._finish(staging_id, sha256, size)

    def _finish(self, staging_id: str, sha256: str, size: int) -> None:
        data = self._staging(staging_id) / "data"
        with self._ahead_lock:
            state = self._ahead.pop(staging_id, None)
        if state is not None:
            with state.cond:  # stop the hashing thread, and take over what it hashed
                state.closed = True
                while state.running:
                    state.cond.wait()
        if state is not None and state.valid:
            digest, got = state.digest, state.hashed  # only the rest needs reading
        else:
            digest, got = hashlib.sha256(), 0
        try:
            for view in directio.read_range(data, got, max(0, size - got) + 1):
                digest.update(view)
                got += len(view)
        except FileNotFoundError:
            got = -1
        if got != size or digest.hexdigest() != sha256:
            self.abort_staging(staging_id)
            raise IntegrityError(
                f"The parts add up to {max(got, 0)} bytes with sha256 {digest.hexdigest()}, expected {size} "
                f"bytes with sha256 {sha256}; they were discarded",
                hint="The file changed or was corrupted in transit: upload it again.",
            )
        try:
            fd = os.open(data, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.publish(data, sha256, size)
        except FileNotFoundError:
            # Taken away as it was checked: by another server that finished (published) this area,
            # for the same upload run elsewhere at once, or by the cleanup of an expired upload.
            raise IntegrityError(
                f"The parts of blob {sha256} were removed as they were checked",
                hint="Upload it again.",
            ) from None
        self.abort_staging(staging_id)

    def abort_staging(self, staging_id: str) -> None:
        area = self._staging(staging_id)
        with self._write_lock(staging_id):  # no part lands (nor its marker) while the area goes
            with self._ahead_lock:
                self._ahead.pop(staging_id, None)
            shutil.rmtree(area, ignore_errors=True)
        with self._ahead_lock:
            self._write_locks.pop(staging_id, None)

    def _write_lock(self, staging_id: str) -> threading.RLock:
        """The lock a staging area's writes, its finishing and its removal take."""
        with self._ahead_lock:
            return self._write_locks.setdefault(staging_id, threading.RLock())

    def orphan_stagings(self, known: set[str], cutoff: datetime) -> list[str]:
        """Staging areas not in ``known`` whose last write is older than ``cutoff`` (left by a crash
        between opening an area and recording it)."""
        found = []
        for staging_id in self.staging_ids():
            if staging_id in known:
                continue
            area = self._staging(staging_id)
            try:
                last = max(p.stat().st_mtime for p in (area, area / "parts", area / "data") if p.exists())
            except (FileNotFoundError, ValueError):
                continue  # removed meanwhile
            if last < cutoff.timestamp():
                found.append(staging_id)
        return found

    def staging_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / "staging").iterdir())
        except FileNotFoundError:
            return []

    def orphan_temporaries(self, cutoff: datetime) -> list[str]:
        """Temporary files of whole-blob writes (``tmp/t*/upload-*``) last written before ``cutoff``:
        left by a server that was killed while it received them (a live writer writes, checks and
        publishes its file within moments of its last byte)."""
        found = []
        for path in sorted(self.tmp_dir.glob("t*/upload-*")):
            try:
                if path.stat().st_mtime < cutoff.timestamp():
                    found.append(path.relative_to(self.tmp_dir).as_posix())
            except FileNotFoundError:
                continue  # published or discarded meanwhile
        return found

    def remove_temporary(self, name: str) -> None:
        folder, _, file = name.partition("/")
        if not (folder.startswith("t") and file.startswith("upload-") and "/" not in file):
            raise ValueError(f"bad temporary file name {name!r}")
        (self.tmp_dir / folder / file).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# libc's syncfs, looked up on first use; None where there is none (not Linux, an old libc) or the
# kernel said ENOSYS.
_syncfs_func: Callable[[int], int] | None = None
_syncfs_looked_up = False


def _libc_syncfs() -> Callable[[int], int] | None:
    global _syncfs_func, _syncfs_looked_up
    if not _syncfs_looked_up:
        func = None
        if sys.platform.startswith("linux"):
            try:
                func = ctypes.CDLL(None, use_errno=True).syncfs
                func.argtypes = [ctypes.c_int]
                func.restype = ctypes.c_int
            except (OSError, AttributeError):
                func = None
        _syncfs_func = func  # two threads that both look it up find the same function
        _syncfs_looked_up = True
    return _syncfs_func


def syncfs(fd: int) -> None:
    """syncfs(2): write back the whole file system that holds ``fd``; OSError on failure (ENOSYS
    where there is no syncfs)."""
    func = _libc_syncfs()
    if func is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    if func(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _syncfs_if_available(fd: int) -> bool:
    """syncfs(fd); False (and no syncfs from then on) where there is none. Other errors raise."""
    global _syncfs_func
    try:
        syncfs(fd)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        _syncfs_func = None
        return False
    return True
