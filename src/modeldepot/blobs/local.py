"""Blobs in a local directory: ``sha256/ab/cd/<hash>``, written through a temp file and renamed."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import IntegrityError, StorageFull


class LocalBlobWriter:
    def __init__(self, store: LocalBlobStore):
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise StorageFull(
                    "The blob store's disk is full", hint="Free space on the disk of the blob directory."
                ) from exc
            raise
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self, expected_sha256: str, expected_size: int) -> None:
        digest = self._hash.hexdigest()
        if digest != expected_sha256 or self.size != expected_size:
            self.abort()
            raise IntegrityError(
                f"Received {self.size} bytes with sha256 {digest}, expected {expected_size} bytes "
                f"with sha256 {expected_sha256}; the bytes were discarded",
                hint="The file changed or was corrupted in transit: upload it again.",
            )
        try:
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        final = self._store._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def commit_computed(self) -> tuple[str, int]:
        """Keep the bytes under the sha256 computed while they were written; return (sha256, size)."""
        digest, size = self._hash.hexdigest(), self.size
        self.commit(digest, size)
        return digest, size

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "sha256").mkdir(exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def local_path(self, sha256: str) -> Path | None:
        path = self._path(sha256)
        return path if path.exists() else None

    def read(self, sha256: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with self._path(sha256).open("rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def location(self) -> str:
        return self.root.resolve().as_uri()
