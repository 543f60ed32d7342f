"""The client side of downloads: every file verified against its sha256, resumable, large files in
parallel ranges.

A file is written as a partial file in ``DEST/.modeldepot-partial/`` (named after the sha256 of its
path, see ``transfer.Partials``) and renamed to its place only once its hash matches, so a corrupt or
partial file never sits under the final name, and a partial file is never taken for a file of the
model. Large files are fetched in ranges on several connections into a preallocated partial file,
whose ``.done`` file records the ranges that arrived, so an interrupted download fetches only the
rest. Other files resume from the length of their partial file. The folder is removed once a
download has been through every file; while one runs it holds a lock, so a second download into the same
destination fails at once instead of writing over the first one's files.

A symlink at a file's place is replaced by the file (``transfer.Targets``); two files of the model
that a symlinked directory would put at the same place are refused before anything is fetched.

A local failure (a full disk, a directory that may not be written) raises the OSError, naming the
file (``transfer.naming``); what arrived stays in the partial files, so running the download again
resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import tarfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from .. import directio
from ..chunks import ChunkReader
from ..errors import ConnectionFailed, IntegrityError, InvalidInput
from ..records import ModelFile
from . import transfer

if TYPE_CHECKING:
    from .client import Client, Progress

RANGED_THRESHOLD = 64 * 1024 * 1024
RANGE_SIZE = 16 * 1024 * 1024  # also the size of each range's buffer, of which parallel + 2 exist at most
# Files up to SMALL_FILE served by the server itself come many to a request, as a tar stream.
SMALL_FILE = 4 * 1024 * 1024
BATCH_BYTES = 32 * 1024 * 1024
BATCH_COUNT = 250


class Downloader:
    def __init__(self, client: Client, progress: Progress):
        self.client = client
        self.bar = progress
        # Files whose bytes failed their sha256 check: the others are still fetched, then one error
        # names them all (a download stopped at the first, and took a run per damaged file).
        self.corrupted: list[tuple[str, IntegrityError]] = []
        # Of those, the files resumed from a partial file of an earlier run (maybe what was damaged).
        self.resumed_bad: set[str] = set()
        self._corrupted_lock = threading.Lock()
        self.partials = transfer.Partials(Path())  # set by run()

    def _kept(self, f: ModelFile, fetch: Callable[..., Any], *args: Any) -> None:
        """``fetch(*args)``, noting an IntegrityError (a file that arrived corrupted) instead of
        raising it."""
        try:
            fetch(*args)
        except IntegrityError as exc:
            with self._corrupted_lock:
                self.corrupted.append((f.path, exc))

    def run(self, model_id: str, dest: Path) -> list[Path]:
        files = self.client._json("GET", f"/models/{transfer.quote_segment(model_id)}/files")["items"]
        where = transfer.Targets(dest)
        targets = [(ModelFile.from_json(f), f["url"], where(f["path"])) for f in files]
        # Before a byte is fetched: a download that cannot land would fail only after it arrived.
        if dest.exists() and not dest.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(dest))
        landed: dict[Path, str] = {}
        for f, _, target in targets:
            if target.is_dir() and not target.is_symlink():  # a symlink there is replaced
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
            first = landed.setdefault(target, f.path)
            if first != f.path:
                raise InvalidInput(
                    f"{first!r} and {f.path!r} would both be written to {target}: a symbolic link to "
                    f"a directory inside {dest} leads one to the other",
                    hint="Remove the symbolic link, or download into another folder.",
                )
        self.partials = transfer.Partials(dest)
        unwritable: OSError | None = None
        try:
            self.partials.make()
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            # A folder that holds the model already may be read-only: this is an error only once
            # a file has to be fetched, and then nothing else could write there either.
            unwritable = exc
        with contextlib.nullcontext() if unwritable is not None else self.partials.lock():
            self._fetch(model_id, targets, unwritable)
            # Every file arrived or, corrupted, was removed: nothing is left to resume.
            self.partials.remove()
        if len(self.corrupted) == 1:
            raise self.corrupted[0][1]
        if self.corrupted:
            paths = sorted(path for path, _ in self.corrupted)
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            resumed = ""
            if self.resumed_bad:
                resumed = (
                    f"; {len(self.resumed_bad)} of them had been resumed from partial files of an "
                    "earlier download, which may be what was damaged (those were removed)"
                )
            raise IntegrityError(
                f"{len(paths)} files arrived corrupted (sha256 mismatch) and were not kept: {shown}; "
                f"the other files were downloaded{resumed}",
                hint="Run the download again: it fetches only these, whole. If they fail again, the "
                "server's copies are damaged: an administrator should run `modeldepot fsck`.",
            )
        return [target for _, _, target in targets]

    def _fetch(
        self, model_id: str, targets: list[tuple[ModelFile, str, Path]], unwritable: OSError | None
    ) -> None:
        self.bar.start("downloading", sum(f.size for f, _, _ in targets))
        try:
            with ThreadPoolExecutor(max_workers=self.client.parallel) as pool:
                futures: list[Future[Any]] = []
                large = []
                batch: list[tuple[ModelFile, str, Path]] = []
                batch_bytes = 0
                made: set[Path] = set()
                for f, url, target in targets:
                    if self._already_there(f, target):
                        continue
                    if unwritable is not None:
                        raise unwritable
                    if target.parent not in made:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        made.add(target.parent)
                    part, _ = self.partials.of(f.path)
                    if f.size >= RANGED_THRESHOLD:
                        large.append((f, url, target))
                    elif f.size <= SMALL_FILE and url.startswith(self.client.url + "/") and not part.exists():
                        if batch and (batch_bytes + f.size > BATCH_BYTES or len(batch) >= BATCH_COUNT):
                            futures.append(pool.submit(self._batch, model_id, batch))
                            batch, batch_bytes = [], 0
                        batch.append((f, url, target))
                        batch_bytes += f.size
                    else:
                        futures.append(pool.submit(self._kept, f, self._whole, f, url, target))
                if batch:
                    futures.append(pool.submit(self._batch, model_id, batch))
                try:
                    # Large files one after the other, each in parallel ranges on a pool of its own.
                    for f, url, target in large:
                        self._kept(f, self._ranged, f, url, target)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
                transfer.wait_all(futures)
        finally:
            self.bar.finish()

    def _already_there(self, f: ModelFile, target: Path) -> bool:
        # Not through a symlink: the link is replaced by the file, even by one with the same bytes.
        if target.is_symlink():
            return False
        if target.is_file() and target.stat().st_size == f.size and transfer.sha256_file(target) == f.sha256:
            self.bar.advance(f.size)
            return True
        return False

    def _whole(self, f: ModelFile, url: str, target: Path) -> Path:
        part, _ = self.partials.of(f.path)
        digest = hashlib.sha256()
        have = part.stat().st_size if part.is_file() else 0
        if have > f.size:
            part.unlink()
            have = 0
        resumed = have > 0  # bytes of an earlier run are in the file
        if have:
            with part.open("rb") as existing:
                while chunk := existing.read(transfer.CHUNK):
                    digest.update(chunk)
            self.bar.advance(have)
        if have and have == f.size:
            return self._finish(f, part, target, digest.hexdigest(), resumed)
        with transfer.naming(part), part.open("r+b" if have else "wb", buffering=0) as out:
            out.seek(have)

            def on_start(status: int) -> None:
                nonlocal digest, resumed
                if have and status == 200:  # the server sent the whole file after all: start over
                    out.seek(0)
                    out.truncate()
                    digest = hashlib.sha256()
                    resumed = False

            def sink(view: memoryview) -> None:
                _write_all(out, view)
                digest.update(view)
                self.bar.advance(len(view))

            self.client.get_into(url, sink, {"Range": f"bytes={have}-"} if have else None, on_start=on_start)
        return self._finish(f, part, target, digest.hexdigest(), resumed)

    def _batch(self, model_id: str, files: list[tuple[ModelFile, str, Path]]) -> None:
        """Many small files in one tar stream; each is still checked against its sha256.

        A stream cut off (by the network, or by the server on finding a stored file damaged) is not
        the end: the files that did not arrive are fetched one by one, each resuming from what came
        of it, so a lost connection costs a retry and a damaged file is named as corrupted.
        """
        wanted = {f.path: (f, url, target) for f, url, target in files}
        archive_url = f"{self.client.url}/api/v1/models/{transfer.quote_segment(model_id)}/archive"
        try:
            request = self.client._http.build_request(
                "POST",
                archive_url,
                json={"format": "tar", "paths": list(wanted)},
                timeout=httpx.Timeout(None, connect=10.0),
            )
            response = self.client._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"Download from {self.client.url} failed: {exc}") from exc
        written = 0  # bytes of the file being extracted, shown on the bar
        with contextlib.closing(response):
            if response.status_code >= 400:
                response.read()
                self.client._raise_for(response)
            stream = ChunkReader(response.iter_bytes(transfer.CHUNK))
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        entry = wanted.get(member.name)
                        source = tar.extractfile(member) if member.isfile() else None
                        if entry is None or source is None:
                            raise IntegrityError(f"The server sent {member.name!r}, which was not asked for")
                        f, _, target = entry
                        part, _ = self.partials.of(f.path)
                        digest = hashlib.sha256()
                        written = 0
                        with transfer.naming(part), part.open("wb") as out:
                            while chunk := source.read(transfer.CHUNK):
                                out.write(chunk)
                                digest.update(chunk)
                                self.bar.advance(len(chunk))
                                written += len(chunk)
                        del wanted[member.name]
                        written = 0
                        self._kept(f, self._finish, f, part, target, digest.hexdigest())
            except (httpx.TransportError, tarfile.ReadError):
                self.bar.advance(-written)  # counted again as the file resumes
        for f, url, target in wanted.values():
            self._kept(f, self._whole, f, url, target)

    def _ranged(self, f: ModelFile, url: str, target: Path) -> Path:
        """A large file in RANGE_SIZE ranges on parallel connections.

        Each range is received into a buffer of its own, written at its offset (around the page
        cache where the file system allows it, see ``directio``), and hashed from that buffer once
        every range before it is hashed, by a thread of its own while the fetches go on; so the
        file is neither read back nor copied into the page cache. Buffers are handed out in range
        order, at most ``parallel + 2`` at once (96 MiB with the default 4 connections), so the next
        range to hash always has one.
        """
        part, done_file = self.partials.of(f.path)
        ranges = [(start, min(start + RANGE_SIZE, f.size)) for start in range(0, f.size, RANGE_SIZE)]
        done: set[int] = set()
        if part.is_file() and part.stat().st_size == f.size and done_file.is_file():
            done = {int(x) for x in done_file.read_text().split() if x.isdigit()}
        else:
            with transfer.naming(part), part.open("wb") as out:
                out.truncate(f.size)
            done_file.write_text("")
        self.bar.advance(sum(end - start for start, end in ranges if start in done))
        fd = os.open(part, os.O_WRONLY)
        direct_fd = directio.open_direct(part, os.O_WRONLY)
        order = _InOrder([start for start, _ in ranges], f.size, done, part, f.path, self.client.parallel)
        marks_lock = threading.Lock()

        def fetch(start: int, end: int, buf: mmap.mmap) -> None:
            got = 0

            def sink(view: memoryview) -> None:  # the bytes are in buf already
                nonlocal got
                got += len(view)
                self.bar.advance(len(view))

            def on_start(status: int) -> None:
                if status != 206:  # before a byte is written where it does not belong
                    raise ConnectionFailed(f"The server did not answer a range request for {f.path}")

            try:
                with memoryview(buf) as whole:
                    self.client.get_into(
                        url,
                        sink,
                        {"Range": f"bytes={start}-{end - 1}"},
                        on_start=on_start,
                        into=whole[: end - start],
                    )
                if start + got != end:
                    raise ConnectionFailed(f"Download of {f.path} was cut off; run it again to resume")
                with transfer.naming(part), memoryview(buf) as whole:
                    directio.write_at(fd, direct_fd, whole[:got], start)
                # Not fsynced, as no download tool does: after a power cut, a range that the .done
                # lists but the disk lost fails the final sha256 check, which discards the file.
                with transfer.naming(done_file), marks_lock, done_file.open("a") as marks:
                    marks.write(f"{start}\n")
            except BaseException:
                order.fail(buf)
                raise
            order.arrived(start, buf, got)

        try:
            with ThreadPoolExecutor(max_workers=self.client.parallel) as pool:
                futures = []
                for start, end in ranges:
                    if start in done:
                        continue
                    buf = order.take()  # in range order: waits while parallel + 2 are in use
                    if buf is None:
                        break  # a range failed
                    futures.append(pool.submit(fetch, start, end, buf))
                transfer.wait_all(futures)
            digest = order.digest()
        finally:
            order.close()
            if direct_fd is not None:
                os.close(direct_fd)
            os.close(fd)
        result = self._finish(f, part, target, digest, bool(done))
        done_file.unlink(missing_ok=True)
        return result

    def _finish(self, f: ModelFile, part: Path, target: Path, digest: str, resumed: bool = False) -> Path:
        """Move the partial file to ``target`` (replacing a symlink there, not writing through it)
        if its bytes are the file's; else remove it and raise IntegrityError. ``resumed``: some of
        its bytes came from an earlier run, which is then named as a likely cause."""
        if digest != f.sha256 or part.stat().st_size != f.size:
            part.unlink(missing_ok=True)
            part.with_suffix(".done").unlink(missing_ok=True)
            if not resumed:
                raise IntegrityError(f"{f.path} arrived corrupted (sha256 mismatch); it was not kept")
            with self._corrupted_lock:
                self.resumed_bad.add(f.path)
            raise IntegrityError(
                f"{f.path} is corrupted (sha256 mismatch) and was not kept: it was resumed from a "
                f"partial file of an earlier download ({part}), which may be what was damaged; that "
                "partial file was removed",
                hint="Run the download again: it fetches the file whole. If it fails again, the "
                "server's copy is damaged: an administrator should run `modeldepot fsck`.",
            )
        os.replace(part, target)
        return target


def _write_all(out: BinaryIO, view: memoryview) -> None:
    while view:
        n = out.write(view)
        view = view[n:]


class _InOrder:
    """The sha256 of a file whose ranges arrive out of order, each in a buffer of its own.

    A thread of its own hashes each range from its buffer once every range before it is hashed (the
    fetch threads go on fetching meanwhile); ranges that arrived in an earlier run (``done``) are read
    back from the file. Buffers come from here, in range order.
    """

    def __init__(self, starts: list[int], size: int, done: set[int], path: Path, label: str, parallel: int):
        self.starts = starts
        self.size = size
        self.done = done
        self.path = path
        self.label = label  # the file's stored path, for errors
        self.sha = hashlib.sha256()
        self.next = 0  # index in starts of the next range to hash
        self.ready: dict[int, tuple[mmap.mmap, int]] = {}
        self.cond = threading.Condition()
        self.failed = False
        self.last_arrived = False  # no more ranges will come
        self.error: BaseException | None = None
        self.free: list[mmap.mmap] = []
        self.made = 0
        self.most = parallel + 2
        self.thread = threading.Thread(target=self._run, name="hash-in-order", daemon=True)
        self.thread.start()

    def take(self) -> mmap.mmap | None:
        """A free buffer (waiting for one while ``most`` are in use); None once a range failed."""
        with self.cond:
            while not self.free and self.made >= self.most and not self.failed:
                self.cond.wait()
            if self.failed:
                return None
            if self.free:
                return self.free.pop()
            self.made += 1
        return mmap.mmap(-1, RANGE_SIZE)

    def fail(self, buf: mmap.mmap) -> None:
        with self.cond:
            self.failed = True
            self.free.append(buf)
            self.cond.notify_all()

    def arrived(self, start: int, buf: mmap.mmap, length: int) -> None:
        """Range ``start`` is written: the hashing thread takes it from here."""
        with self.cond:
            self.ready[start] = (buf, length)
            self.cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        if self.next >= len(self.starts) or self.failed:
                            return
                        start = self.starts[self.next]
                        entry = self.ready.pop(start, None)
                        if entry is not None or start in self.done:
                            break
                        if self.last_arrived:
                            return  # a range never came: digest() says so
                        self.cond.wait()
                if entry is None:  # arrived in an earlier run: read it back
                    end = self.starts[self.next + 1] if self.next + 1 < len(self.starts) else self.size
                    for view in directio.read_range(self.path, start, end - start):
                        self.sha.update(view)
                else:
                    buf, length = entry
                    with memoryview(buf) as whole:
                        self.sha.update(whole[:length])
                with self.cond:
                    if entry is not None:
                        self.free.append(entry[0])
                    self.next += 1
                    self.cond.notify_all()
        except BaseException as exc:  # handed to digest()
            with self.cond:
                self.error = exc
                self.failed = True
                self.cond.notify_all()

    def digest(self) -> str:
        """The file's sha256, once every range arrived."""
        with self.cond:
            self.last_arrived = True
            self.cond.notify_all()
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.next != len(self.starts):
            raise IntegrityError(f"{self.label}: a range did not arrive; run the download again")
        return self.sha.hexdigest()

    def close(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()
        self.thread.join()
        with self.cond:
            bufs = self.free + [buf for buf, _ in self.ready.values()]
            self.free, self.ready = [], {}
        for buf in bufs:
            # A view of it may still exist: in the traceback of the error that ended the download
            # (a write that failed), which must come out rather than a BufferError. The buffer is
            # then freed with the last view.
            with contextlib.suppress(BufferError):
                buf.close()
