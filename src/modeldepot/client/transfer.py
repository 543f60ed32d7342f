"""Client-side file work: scanning a path into a manifest (hashed in parallel) and safe local writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInput
from ..paths import normalize_path
from ..records import ModelFile
from .hashcache import HashCache

if sys.platform != "win32":
    import fcntl

CHUNK = 1024 * 1024
# Files are hashed in groups of consecutive files, one group to a task; a group closes once it holds
# this many files or bytes to read (so each large file ends one). With one task per file the threads
# spent more time handing the GIL to each other than hashing: 2,000 files of 4-64 KiB took
# 0.16-0.20 s on 4 threads, 0.07 s on one, 0.08-0.13 s in groups on 4 threads (which still read
# several files at once from a cold disk).
GROUP_FILES = 256
GROUP_BYTES = 16 * 1024 * 1024


class Stopped(Exception):
    """Work given up because the caller stopped waiting for it (Ctrl-C, or another file failed)."""


def sha256_file(path: Path, on_bytes: object = None, stop: threading.Event | None = None) -> str:
    """The file's sha256, read in CHUNK pieces; raises Stopped soon after ``stop`` is set."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if stop is not None and stop.is_set():
                raise Stopped(f"hashing {path} was stopped")
            digest.update(chunk)
            if callable(on_bytes):
                on_bytes(len(chunk))
    return digest.hexdigest()


def scan(root: Path) -> list[tuple[str, Path]]:
    """(stored path, local path) for a file, or for every file under a directory (sorted)."""
    if not root.exists():
        raise InvalidInput(f"{root} does not exist", hint="Check the path you gave.")
    if root.is_file():
        return [(normalize_path(root.name), root)]
    if not root.is_dir():
        raise InvalidInput(f"{root} is neither a file nor a directory")
    found: list[tuple[str, Path]] = []

    def unreadable(exc: OSError) -> None:
        # Without this os.walk skips a directory it cannot list, and the model would be made
        # without the files in it.
        raise InvalidInput(
            f"Cannot read the directory {exc.filename}: {exc.strerror}",
            hint="Check its permissions (you need to be able to list it), or upload a path without it.",
        ) from None

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            local = Path(dirpath) / name
            if not local.is_file():  # broken symlinks, sockets, fifos
                continue
            rel = local.relative_to(root).as_posix()
            found.append((normalize_path(rel), local))
    if not found:
        raise InvalidInput(
            f"Directory {root} has no files to upload", hint="A model needs at least one file."
        )
    return found


def build_manifest(
    entries: list[tuple[str, Path]],
    on_bytes: object = None,
    workers: int | None = None,
    cache: HashCache | None = None,
) -> list[tuple[ModelFile, Path]]:
    """Hash every file (sha256, streamed) on a few threads, small files in groups (see GROUP_FILES);
    hashlib releases the GIL on big buffers.

    With a ``cache``, files unchanged since they were last hashed are not read again.
    """

    # Every file's stat, for the groups, and for the cache, which is asked once for all files (one
    # query per 500).
    looked: list[tuple[os.stat_result, str | None] | None] = [None] * len(entries)
    try:
        stats = [local.stat() for _, local in entries]
    except FileNotFoundError:
        pass  # each file is looked at again below, and the one that went is named there
    else:
        digests = cache.get_many(stats) if cache is not None else [None] * len(stats)
        looked = list(zip(stats, digests, strict=True))

    def one(index: int) -> tuple[ModelFile, Path]:
        stored, local = entries[index]
        try:
            seen = looked[index]
            st, digest = seen if seen is not None else (local.stat(), None)
            size = st.st_size
            if digest is not None:
                if callable(on_bytes):
                    on_bytes(size)
            else:
                started = time.time()
                digest = sha256_file(local, on_bytes, stop)
                if cache is not None:
                    cache.put(st, digest, started)
        except FileNotFoundError:
            raise InvalidInput(f"{local} vanished while it was being read", hint="Upload again.") from None
        return ModelFile(path=stored, size=size, sha256=digest), local

    def group(indexes: range) -> list[tuple[ModelFile, Path]]:
        return [one(i) for i in indexes]

    groups: list[range] = []
    start = count = size = 0
    for index, seen in enumerate(looked):
        # A file known to the cache is not read: it costs the group nothing.
        if seen is not None and seen[1] is None:
            size += seen[0].st_size
        count += 1
        if count >= GROUP_FILES or size >= GROUP_BYTES:
            groups.append(range(start, index + 1))
            start, count, size = index + 1, 0, 0
    if start < len(entries):
        groups.append(range(start, len(entries)))
    # On Ctrl-C (or a file that fails) the other threads stop within a CHUNK, and the groups not
    # started are dropped: waiting for them would keep Ctrl-C waiting until every file is hashed.
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2))
    try:
        return [item for done in pool.map(group, groups) for item in done]
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an OSError raised inside the file name it lacks: a failed ``write`` says only "No space
    left on device", and the CLI prints the path an error names (see ``cli/main.py``)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # the subclass of the errno


def read_chunks(path: Path, expected_size: int, on_bytes: object = None) -> Iterator[bytes]:
    """The file's bytes, refusing to send more or fewer than the manifest said."""
    sent = 0
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise InvalidInput(f"{path} vanished before it was uploaded", hint="Upload again.") from None
    with f:
        while chunk := f.read(CHUNK):
            sent += len(chunk)
            if sent > expected_size:
                raise IntegrityError(
                    f"{path} grew while it was being uploaded", hint="Upload it again when stable."
                )
            if callable(on_bytes):
                on_bytes(len(chunk))
            yield chunk
    if sent != expected_size:
        raise IntegrityError(
            f"{path} changed while it was being uploaded", hint="Upload it again when stable."
        )


class Targets:
    """Where stored paths land under ``dest``; refuses any that would escape it (``..``, or a symlink
    on the way that leads outside) or land in the folder of partial files (``Partials``). Each
    directory is resolved once, not once per file in it.

    A symlink at a file's own place is not followed: the file replaces the link (a link to another
    file of the model made both files hold the bytes of whichever came last). One that leads outside
    ``dest`` is refused all the same, as it always was."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.root = dest.resolve()
        self._dirs: dict[str, Path] = {}

    def __call__(self, stored_path: str) -> Path:
        clean = normalize_path(stored_path)
        folder, _, name = clean.rpartition("/")
        parent = self._dirs.get(folder)
        if parent is None:
            parent = self._dirs[folder] = (self.dest / folder).resolve()
        target = parent / name
        real = target.resolve() if os.path.islink(target) else target
        if not (target.is_relative_to(self.root) and real.is_relative_to(self.root)):
            raise InvalidInput(f"Refusing to write {stored_path!r} outside {self.dest}")
        # casefold: on a case-insensitive file system .ModelDepot-Partial is the same folder.
        first = target.relative_to(self.root).parts[0]
        if first.casefold() == PARTIAL_DIR:
            raise InvalidInput(
                f"Refusing to write {stored_path!r} into {self.dest / PARTIAL_DIR}, the folder where "
                "downloads keep the files still arriving",
                hint="Download the model as one archive instead (`modeldepot models archive`), or remove "
                "the symbolic link that leads there.",
            )
        return target


PARTIAL_DIR = ".modeldepot-partial"


class Partials:
    """The files of a download still arriving, in one folder of the destination:
    ``DEST/.modeldepot-partial/<sha256 of the stored path>.part`` (and ``.done`` for a file fetched
    in ranges: the ranges that arrived).

    Not next to the file as ``NAME.part``: that can be the name of another file of the model (whose
    bytes then ended up under the wrong name), and one 251 to 255 bytes long is too long with it.
    The names here are 69 bytes whatever the path, and depend on the path only, so a download run
    again finds what arrived. ``Targets`` refuses model paths in this folder.

    ``lock()`` holds an exclusive ``flock`` on ``lock`` in the folder while a download runs: a second
    download into the same destination fails at once (``InvalidInput``) rather than truncating the
    first one's partial files. ``remove()`` deletes the folder once a download has been through
    every file (each arrived, or was found corrupted and removed): nothing is left to resume.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        self.dir = dest / PARTIAL_DIR

    def of(self, stored_path: str) -> tuple[Path, Path]:
        """The partial file of ``stored_path`` and its record of ranges."""
        key = hashlib.sha256(normalize_path(stored_path).encode()).hexdigest()
        return self.dir / f"{key}.part", self.dir / f"{key}.done"

    def make(self) -> None:
        if os.path.islink(self.dir):  # partial files elsewhere could not be renamed into place
            raise InvalidInput(
                f"{self.dir} is a symbolic link", hint="Remove it: downloads keep their partial files there."
            )
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held for a whole download into ``dest``; raises InvalidInput if another one holds it."""
        if sys.platform == "win32":  # no flock: nothing stops two downloads into one folder
            yield
            return
        path = self.dir / "lock"
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # removed by a download that ended since make()
                self.make()
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InvalidInput(
                    f"Another download is writing into {self.dest}",
                    hint="Wait for it to end (running this again then keeps what it downloaded), or "
                    "download into another folder: two downloads into one folder would write over "
                    "each other's files.",
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A download that just ended removed the folder, lock file and all: the lock taken is
            # then on a file no other download can find. Take the one that is there now.
            try:
                there = os.stat(path)
            except FileNotFoundError:
                there = None
            held = os.fstat(fd)
            if there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)
            self.make()
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove(self) -> None:
        """Delete the folder (whatever is left in it: partial files of earlier, other downloads)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def quote_segment(value: str, safe: str = "") -> str:
    """One URL path segment (or a path, with ``safe='/'``), percent-encoded."""
    from urllib.parse import quote

    return quote(str(value), safe=safe)


def wait_all(futures: list[Future[Any]]) -> None:
    """Wait for every future; at the first failure cancel those not started, and raise it."""
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
