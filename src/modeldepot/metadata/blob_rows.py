"""The blob index and upload staging rows of the metadata store (a mixin of SqlMetadataStore).

Publishing a blob and collecting it take the same row inside one transaction, so a garbage
collector can never delete bytes in the instant they are published again: on PostgreSQL the row
(or the unique key of a row being inserted) is locked; on SQLite every write transaction is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..services.ports import PendingBlob, Staging
from . import tables as t


def _unreferenced(sha: Any) -> Any:
    return and_(
        ~exists().where(t.model_files.c.sha256 == sha),
        ~exists().where(t.pending_blobs.c.sha256 == sha),
    )


class BlobRows:
    engine: Engine
    _tx: Callable[[], AbstractContextManager[Connection]]

    @staticmethod
    def _upsert_blob(conn: Connection, sha256: str, size: int, now: datetime) -> None:
        # INSERT … ON CONFLICT: two publishers of the same content at once both succeed (and wait
        # for each other, and for a collector holding the row).
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = dialect_insert(t.blobs).values(sha256=sha256, size=size, created_at=now, touched_at=now)
        conn.execute(stmt.on_conflict_do_update(index_elements=[t.blobs.c.sha256], set_={"touched_at": now}))

    @contextmanager
    def publishing_blob(self, sha256: str, size: int) -> Iterator[None]:
        """Hold blob ``sha256``'s row (created or touched) while its bytes are moved into place."""
        with self._tx() as conn:
            self._upsert_blob(conn, sha256, size, datetime.now(UTC))
            yield

    @contextmanager
    def publishing_blobs(self, blobs: Sequence[tuple[str, int]]) -> Iterator[None]:
        """:meth:`publishing_blob` for many blobs in one transaction (rows taken in sha256 order, so
        that two batches never wait for each other crosswise)."""
        now = datetime.now(UTC)
        rows = [
            {"sha256": sha256, "size": size, "created_at": now, "touched_at": now}
            for sha256, size in sorted(set(blobs))
        ]
        with self._tx() as conn:
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            # Many rows to a statement (at most 4 x 200 parameters: under SQLite's oldest limit).
            for i in range(0, len(rows), 200):
                stmt = dialect_insert(t.blobs).values(rows[i : i + 200])
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[t.blobs.c.sha256], set_={"touched_at": stmt.excluded.touched_at}
                    )
                )
            yield

    def _blob_column(self, column: Any, shas: Iterable[str]) -> dict[str, Any]:
        """``column`` of the index row of each of ``shas`` that has one (500 to a query)."""
        wanted = sorted(set(shas))
        found: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(t.blobs.c.sha256, column).where(t.blobs.c.sha256.in_(wanted[i : i + 500]))
                )
                found.update((sha, value) for sha, value in rows)
        return found

    def stored_blobs(self, shas: Iterable[str]) -> dict[str, int]:
        """Size of each of ``shas`` the blob store holds (per the index)."""
        return {sha: int(size) for sha, size in self._blob_column(t.blobs.c.size, shas).items()}

    def touch_blobs(self, shas: Iterable[str]) -> None:
        wanted = sorted(set(shas))
        now = datetime.now(UTC)
        with self._tx() as conn:
            for i in range(0, len(wanted), 500):
                conn.execute(
                    update(t.blobs).where(t.blobs.c.sha256.in_(wanted[i : i + 500])).values(touched_at=now)
                )

    def gc_candidates(self, cutoff: datetime, limit: int) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.blobs.c.sha256, t.blobs.c.size)
                .where(t.blobs.c.touched_at < cutoff, _unreferenced(t.blobs.c.sha256))
                .order_by(t.blobs.c.touched_at)
                .limit(limit)
            )
            return [(sha, int(size)) for sha, size in rows]

    @contextmanager
    def collecting_blob(self, sha256: str, cutoff: datetime) -> Iterator[bool]:
        """Delete blob ``sha256``'s row if still unreferenced and untouched; yield whether it was.

        The caller deletes the bytes inside the block, while the row stays locked.
        """
        with self._tx() as conn:
            gone = conn.execute(
                delete(t.blobs).where(
                    t.blobs.c.sha256 == sha256, t.blobs.c.touched_at < cutoff, _unreferenced(t.blobs.c.sha256)
                )
            )
            yield gone.rowcount == 1

    @contextmanager
    def forgetting_blob(self, sha256: str, touched_at: datetime) -> Iterator[bool]:
        """Delete blob ``sha256``'s row whatever names it (``fsck --repair``: its bytes are damaged or
        gone), if it was not touched since ``touched_at`` (when it was found damaged: a blob collected
        and published again since, or touched by an upload, is left alone); yield whether it was
        deleted. The caller deletes the bytes inside the block, while the row stays locked. The next
        upload of that content then sends it again, and every model naming it has it back."""
        with self._tx() as conn:
            gone = conn.execute(
                delete(t.blobs).where(t.blobs.c.sha256 == sha256, t.blobs.c.touched_at == touched_at)
            )
            yield gone.rowcount == 1

    def blob_touches(self, shas: Iterable[str]) -> dict[str, datetime]:
        """When each of ``shas`` that has an index row was last touched."""
        return self._blob_column(t.blobs.c.touched_at, shas)

    def unbacked_files(self) -> list[tuple[str, str, str]]:
        """(model id, path, sha256) of the files of ready models whose content has no index row (its
        blob was forgotten by ``fsck --repair`` and not uploaded again since)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.model_files.c.model_id, t.model_files.c.path, t.model_files.c.sha256)
                .join(t.models, t.models.c.id == t.model_files.c.model_id)
                .where(
                    t.models.c.state == "ready",
                    ~exists().where(t.blobs.c.sha256 == t.model_files.c.sha256),
                )
                .order_by(t.model_files.c.model_id, t.model_files.c.path)
            )
            return [(m, p, s) for m, p, s in rows]

    def files_naming(self, shas: Iterable[str]) -> list[tuple[str, str, str]]:
        """(model id, path, sha256) of every model file whose content is one of ``shas``."""
        wanted = sorted(set(shas))
        found: list[tuple[str, str, str]] = []
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(t.model_files.c.model_id, t.model_files.c.path, t.model_files.c.sha256)
                    .where(t.model_files.c.sha256.in_(wanted[i : i + 500]))
                    .order_by(t.model_files.c.model_id, t.model_files.c.path)
                )
                found.extend((m, p, s) for m, p, s in rows)
        return sorted(found)

    def recent_blobs(self, limit: int) -> list[tuple[str, int]]:
        """(sha256, size) of the ``limit`` blobs touched last."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.blobs.c.sha256, t.blobs.c.size).order_by(t.blobs.c.touched_at.desc()).limit(limit)
            )
            return [(sha, int(size)) for sha, size in rows]

    def blob_index(self) -> Iterator[tuple[str, int, datetime]]:
        """(sha256, size, when last touched) of every indexed blob."""
        with self.engine.connect() as conn:
            for sha, size, touched in conn.execute(
                select(t.blobs.c.sha256, t.blobs.c.size, t.blobs.c.touched_at).order_by(t.blobs.c.sha256)
            ):
                yield sha, int(size), touched

    # -- pending blobs of uploads ---------------------------------------------------------------

    @staticmethod
    def _pending(r: Any) -> PendingBlob:
        return PendingBlob(sha256=r.sha256, size=int(r.size), staging_id=r.staging_id, part_size=r.part_size)

    def pending(self, model_id: str) -> list[PendingBlob]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.pending_blobs)
                .where(t.pending_blobs.c.model_id == model_id)
                .order_by(t.pending_blobs.c.sha256)
            )
            return [self._pending(r) for r in rows]

    def get_pending(self, model_id: str, sha256: str) -> PendingBlob | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(t.pending_blobs).where(
                    t.pending_blobs.c.model_id == model_id, t.pending_blobs.c.sha256 == sha256
                )
            ).first()
        return None if r is None else self._pending(r)

    def set_staging(self, model_id: str, sha256: str, staging_id: str, part_size: int) -> bool:
        """Record the staging area of a pending blob, unless one was recorded first (returns False)."""
        with self._tx() as conn:
            return self._give_staging(conn, model_id, sha256, staging_id, part_size)

    @staticmethod
    def _give_staging(conn: Connection, model_id: str, sha256: str, staging_id: str, part_size: int) -> bool:
        done = conn.execute(
            update(t.pending_blobs)
            .where(
                t.pending_blobs.c.model_id == model_id,
                t.pending_blobs.c.sha256 == sha256,
                t.pending_blobs.c.staging_id.is_(None),
            )
            .values(staging_id=staging_id, part_size=part_size)
        )
        return done.rowcount == 1

    def clear_staging(self, model_id: str, sha256: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(t.pending_blobs)
                .where(t.pending_blobs.c.model_id == model_id, t.pending_blobs.c.sha256 == sha256)
                .values(staging_id=None, part_size=None)
            )

    def add_pending(self, model_id: str, blobs: Sequence[tuple[str, int]]) -> None:
        with self._tx() as conn:
            have = set(
                conn.scalars(select(t.pending_blobs.c.sha256).where(t.pending_blobs.c.model_id == model_id))
            )
            rows = [
                {"model_id": model_id, "sha256": s, "size": n}
                for s, n in dict(blobs).items()
                if s not in have
            ]
            if rows:
                conn.execute(insert(t.pending_blobs), rows)

    def stagings_of_expired(self, cutoff: datetime) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(t.pending_blobs.c.staging_id)
                    .join(t.models, t.models.c.id == t.pending_blobs.c.model_id)
                    .where(
                        t.models.c.state == "uploading",
                        t.models.c.expires_at < cutoff,
                        t.pending_blobs.c.staging_id.is_not(None),
                    )
                )
            )

    def all_staging_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    select(t.pending_blobs.c.staging_id).where(t.pending_blobs.c.staging_id.is_not(None))
                )
            ) | set(conn.scalars(select(t.stagings.c.id)))

    # -- stagings opened before their content's sha256 was known -------------------------------------

    def create_staging(self, staging: Staging) -> None:
        with self._tx() as conn:
            conn.execute(insert(t.stagings).values(**dataclasses.asdict(staging)))

    def get_staging(self, staging_id: str) -> Staging | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.stagings).where(t.stagings.c.id == staging_id)).mappings().first()
        return None if row is None else _staging(row)

    def renew_staging(self, staging_id: str, expires_at: datetime) -> bool:
        """Give a staging area no upload has named a new expiry (False: there is no such area)."""
        with self._tx() as conn:
            done = conn.execute(
                update(t.stagings).where(t.stagings.c.id == staging_id).values(expires_at=expires_at)
            )
            return done.rowcount == 1

    def count_stagings(self, created_by: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(t.stagings.c.created_by == created_by)) or 0)

    def adopt_staging(self, model_id: str, sha256: str, staging: Staging) -> bool:
        """Hand a staging area to a pending blob that has none, in one transaction (False: not done)."""
        try:
            with self._tx() as conn:
                taken = conn.execute(
                    delete(t.stagings).where(
                        t.stagings.c.id == staging.id, t.stagings.c.created_by == staging.created_by
                    )
                )
                given = self._give_staging(conn, model_id, sha256, staging.id, staging.part_size)
                if taken.rowcount != 1 or not given:
                    raise _NotAdopted  # rolls both back: the staging stays where it was
        except _NotAdopted:
            return False
        return True

    def pending_of_staging(self, staging_id: str) -> tuple[str, PendingBlob] | None:
        """The uploading model and pending blob that took this staging area over, if one did."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.pending_blobs).where(t.pending_blobs.c.staging_id == staging_id)
            ).first()
        return None if row is None else (row.model_id, self._pending(row))

    def delete_staging(self, staging_id: str) -> bool:
        with self._tx() as conn:
            return conn.execute(delete(t.stagings).where(t.stagings.c.id == staging_id)).rowcount == 1

    def expired_stagings(self, now: datetime) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(t.stagings.c.id).where(t.stagings.c.expires_at < now)))


class _NotAdopted(Exception):
    pass


def _staging(row: Any) -> Staging:
    return Staging(
        id=row["id"],
        project_id=row["project_id"],
        created_by=row["created_by"],
        size=int(row["size"]),
        part_size=int(row["part_size"]),
        created_at=t.utc(row["created_at"]),  # type: ignore[arg-type]
        expires_at=t.utc(row["expires_at"]),  # type: ignore[arg-type]
    )
