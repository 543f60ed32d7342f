"""A local cache of file digests, so re-uploading unchanged files does not hash them again.

An entry is keyed by the file's device and inode and is valid only while its size, mtime and ctime
(in nanoseconds) are unchanged. As git does with its index, an entry is not trusted when the file was
modified shortly before it was hashed: a write in the same timestamp tick could otherwise go
unnoticed. How shortly depends on the file system's timestamps: ``RACY_SECONDS`` (2 s) where the
mtime is whole seconds (FAT, ext3, some network file systems), ``RACY_FINE_SECONDS`` (0.1 s) where
it has digits below the second (ext4, XFS, btrfs, tmpfs: Linux sets them from a clock that moves at
each timer tick, 1-10 ms). With 2 s everywhere, a checkpoint uploaded within 2 s of being written
and cut off was sent whole again on the next run (524 MB of 524 MB, by hand). A wrong digest would
not corrupt anything (the server verifies every byte it receives), but it would fail the upload.

The same file keeps the staging areas that large files were sent into while they were hashed, until
an upload names them, under the same rules: an upload cut off before its manifest (Ctrl-C, a lost
connection, a killed process) finds its area again and sends only the parts that did not arrive.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

RACY_SECONDS = 2.0
RACY_FINE_SECONDS = 0.1


class HashCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, hashed_at REAL, sha256 TEXT, PRIMARY KEY (dev, ino))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS areas (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, opened_at REAL, server TEXT, project TEXT, staging_id TEXT,"
            " PRIMARY KEY (dev, ino, server, project))"
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, int, int, int, float, str]] = []

    def get(self, st: os.stat_result) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, hashed_at, sha256 FROM hashes WHERE dev = ? AND ino = ?",
                (st.st_dev, st.st_ino),
            ).fetchone()
        return self._valid(st, None if row is None else tuple(row))

    def get_many(self, stats: list[os.stat_result]) -> list[str | None]:
        """:meth:`get` for many files at once: a query per 500 files, not one per file (with a query
        each, 8 hashing threads queued on the connection's lock for 2.4 s over 10,000 files)."""
        rows: dict[tuple[int, int], tuple[int, int, int, float, str]] = {}
        inodes = sorted({st.st_ino for st in stats})
        with self._lock:
            for i in range(0, len(inodes), 500):
                chunk = inodes[i : i + 500]
                query = (
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, hashed_at, sha256 FROM hashes"
                    f" WHERE ino IN ({', '.join('?' * len(chunk))})"
                )
                for dev, ino, *rest in self._db.execute(query, chunk):
                    rows[(dev, ino)] = tuple(rest)
        return [self._valid(st, rows.get((st.st_dev, st.st_ino))) for st in stats]

    @staticmethod
    def _valid(st: os.stat_result, row: tuple[int, int, int, float, str] | None) -> str | None:
        if row is None:
            return None
        size, mtime_ns, ctime_ns, hashed_at, digest = row
        if (size, mtime_ns, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        racy = RACY_SECONDS if mtime_ns % 1_000_000_000 == 0 else min(RACY_FINE_SECONDS, RACY_SECONDS)
        if max(mtime_ns, ctime_ns) / 1e9 > hashed_at - racy:
            return None
        return str(digest)

    def area(self, st: os.stat_result, server: str, project: str) -> tuple[str, bool] | None:
        """The staging area this file's parts were being sent into on ``server`` for ``project``, and
        whether its parts can be trusted to be this file's (it is unchanged since)."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, opened_at, staging_id FROM areas"
                " WHERE dev = ? AND ino = ? AND server = ? AND project = ?",
                (st.st_dev, st.st_ino, server, project),
            ).fetchone()
        if row is None:
            return None
        return str(row[4]), self._valid(st, tuple(row)) is not None

    def put_area(self, st: os.stat_result, server: str, project: str, staging_id: str) -> None:
        """Remember an area at once (not at close): a process killed while sending keeps it."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO areas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    st.st_dev,
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    time.time(),
                    server,
                    project,
                    staging_id,
                ),
            )

    def forget_areas(self, staging_ids: list[str]) -> None:
        if not staging_ids:
            return
        with self._lock, self._db:
            self._db.executemany("DELETE FROM areas WHERE staging_id = ?", [(i,) for i in staging_ids])

    def put(self, st: os.stat_result, sha256: str, hashed_at: float | None = None) -> None:
        when = time.time() if hashed_at is None else hashed_at
        with self._lock:
            self._pending.append(
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, when, sha256)
            )

    def close(self) -> None:
        with self._lock:
            if self._pending:
                with self._db:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", self._pending
                    )
                self._pending.clear()
            self._db.close()
