"""The SQLAlchemy implementation of :class:`modeldepot.services.ports.MetadataStore`."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from ..errors import StorageFull
from ..records import Alias, ApiKey, Model, ModelFile, Project
from ..services.ports import ModelQuery, NewModel, StoredKey, UploadInProgress
from . import tables as t
from .blob_rows import BlobRows
from .workload_rows import WorkloadRows

_MIGRATIONS = Path(__file__).parent / "migrations"
# The PostgreSQL advisory lock that migrations take (an arbitrary number: "modeldepot" in ASCII).
_MIGRATION_LOCK = 0x6D6F64656C646570


def _disk_full(error: BaseException | None) -> bool:
    """Whether a driver's error says the database's disk (or its size limit) is full: SQLite's
    SQLITE_FULL, PostgreSQL's disk_full (53100)."""
    return (
        getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(error, "sqlstate", None) == "53100"
    )


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///…`` (WAL, foreign keys on) or ``postgresql://…`` (psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


class SqlMetadataStore(BlobRows, WorkloadRows):
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        # SQLite lets one writer in at a time and makes the others sleep and retry; inside one
        # process a lock hands the turn over at once instead. (Reentrant: a transaction may nest.)
        self._write_lock: AbstractContextManager[Any] = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (or to ``revision``, for tests of upgrades)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas started together migrate one after the other (the others then find the
                # schema current): at once, all but one failed creating the same tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._write_lock, self.engine.begin() as conn:
                yield conn
        except sa_exc.DBAPIError as exc:
            if _disk_full(exc.orig):
                raise StorageFull(
                    "The metadata database's disk is full; nothing was changed",
                    hint="Free space on the disk of the server's data directory (or of the database), "
                    "then try again.",
                ) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # -- projects ----------------------------------------------------------------------------------

    def create_project(self, project: Project) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(t.projects).values(
                    id=project.id,
                    name=project.name,
                    created_at=project.created_at,
                    created_by=project.created_by,
                    repo_name=project.repo_name,
                    repo_url=project.repo_url,
                )
            )
            self._replace_tags(conn, t.project_tags, "project_id", project.id, project.tags)

    def _projects(self, conn: Connection, ids: tuple[str, ...] | None) -> list[Project]:
        """Projects (all, or these ids) with their count of ready models; counts only what is asked."""
        where: Any = t.projects.c.id.in_(ids) if ids is not None else True
        count_where: Any = t.models.c.state == "ready"
        if ids is not None:
            count_where = and_(count_where, t.models.c.project_id.in_(ids))
        counts = (
            select(t.models.c.project_id, func.count().label("n"))
            .where(count_where)
            .group_by(t.models.c.project_id)
            .subquery()
        )
        rows = conn.execute(
            select(t.projects, func.coalesce(counts.c.n, 0).label("model_count"))
            .outerjoin(counts, counts.c.project_id == t.projects.c.id)
            .where(where)
            .order_by(t.projects.c.created_at.desc(), t.projects.c.id)
        ).mappings()
        found = list(rows)
        tags: dict[str, list[str]] = defaultdict(list)
        if found:
            for pid, tag in conn.execute(
                select(t.project_tags.c.project_id, t.project_tags.c.tag)
                .where(t.project_tags.c.project_id.in_([r["id"] for r in found]))
                .order_by(t.project_tags.c.tag)
            ):
                tags[pid].append(tag)
        return [
            Project(
                id=r["id"],
                name=r["name"],
                created_at=t.utc(r["created_at"]),  # type: ignore[arg-type]
                created_by=r["created_by"],
                model_count=int(r["model_count"]),
                tags=tuple(tags[r["id"]]),
                repo_name=r["repo_name"],
                repo_url=r["repo_url"],
            )
            for r in found
        ]

    def get_project(self, project_id: str) -> Project | None:
        with self._read() as conn:
            found = self._projects(conn, (project_id,))
        return found[0] if found else None

    def project_exists(self, project_id: str) -> bool:
        with self._read() as conn:
            return conn.scalar(select(t.projects.c.id).where(t.projects.c.id == project_id)) is not None

    def list_projects(self, project_ids: tuple[str, ...] | None) -> list[Project]:
        with self._read() as conn:
            return self._projects(conn, project_ids)

    def update_project(self, project_id: str, **fields: Any) -> None:
        with self._tx() as conn:
            conn.execute(update(t.projects).where(t.projects.c.id == project_id).values(**fields))

    def set_project_tags(self, project_id: str, tags: Iterable[str]) -> None:
        with self._tx() as conn:
            self._replace_tags(conn, t.project_tags, "project_id", project_id, tags)

    def delete_project(self, project_id: str) -> None:
        with self._tx() as conn:
            # Children first: no reliance on ON DELETE CASCADE being switched on in every dialect.
            model_ids = select(t.models.c.id).where(t.models.c.project_id == project_id)
            conn.execute(delete(t.aliases).where(t.aliases.c.project_id == project_id))
            conn.execute(delete(t.alias_history).where(t.alias_history.c.project_id == project_id))
            conn.execute(delete(t.model_tags).where(t.model_tags.c.model_id.in_(model_ids)))
            conn.execute(delete(t.model_files).where(t.model_files.c.model_id.in_(model_ids)))
            conn.execute(delete(t.pending_blobs).where(t.pending_blobs.c.model_id.in_(model_ids)))
            conn.execute(delete(t.models).where(t.models.c.project_id == project_id))
            conn.execute(delete(t.workloads).where(t.workloads.c.project_id == project_id))
            conn.execute(delete(t.model_names).where(t.model_names.c.project_id == project_id))
            conn.execute(delete(t.key_roles).where(t.key_roles.c.project_id == project_id))
            conn.execute(delete(t.project_tags).where(t.project_tags.c.project_id == project_id))
            conn.execute(delete(t.projects).where(t.projects.c.id == project_id))

    def count_models(self, project_id: str) -> int:
        with self._read() as conn:
            return int(conn.scalar(select(func.count()).where(t.models.c.project_id == project_id)) or 0)

    # -- models ------------------------------------------------------------------------------------

    @staticmethod
    def _next_version(conn: Connection, project_id: str, name: str) -> int:
        """Take the next version number of a name; raises IntegrityError when racing another writer."""
        n = t.model_names
        key = (n.c.project_id == project_id, n.c.name == name)
        last = conn.scalar(select(n.c.last_version).where(*key))
        if last is None:
            conn.execute(insert(n).values(project_id=project_id, name=name, last_version=1))
            return 1
        done = conn.execute(update(n).where(*key, n.c.last_version == last).values(last_version=last + 1))
        if done.rowcount != 1:
            raise sa_exc.IntegrityError("version race", None, Exception("version race"))
        return int(last) + 1

    def create_model(self, new: NewModel) -> Model:
        size = sum(f.size for f in new.files)
        for attempt in range(50):
            try:
                with self._tx() as conn:
                    if new.upload_key is not None:
                        # The same upload started elsewhere at the same instant: it made the model
                        # (a unique index keeps two from being made; this sees the one that won).
                        earlier = self._find_upload(conn, new.project_id, new.upload_key, new.created_by)
                        if earlier is not None:
                            raise UploadInProgress(earlier)
                    version = self._next_version(conn, new.project_id, new.name)
                    seq = conn.execute(
                        insert(t.models)
                        .values(
                            id=new.id,
                            project_id=new.project_id,
                            name=new.name,
                            version=version,
                            type=new.type or "Custom",
                            state=new.state,
                            summary=new.summary,
                            notes=new.notes,
                            metadata=new.metadata,
                            dataset_ref=new.dataset_ref,
                            source=new.source,
                            created_at=new.created_at,
                            created_by=new.created_by,
                            size=size,
                            file_count=len(new.files),
                            expires_at=new.expires_at,
                            upload_key=new.upload_key,
                        )
                        .returning(t.models.c.seq)
                    ).scalar_one()
                    if new.tags:
                        conn.execute(
                            insert(t.model_tags),
                            [{"model_id": new.id, "tag": tag, "seq": seq} for tag in sorted(set(new.tags))],
                        )
                    if new.files:
                        conn.execute(
                            insert(t.model_files),
                            [
                                {"model_id": new.id, "path": f.path, "size": f.size, "sha256": f.sha256}
                                for f in new.files
                            ],
                        )
                    if new.pending:
                        conn.execute(
                            insert(t.pending_blobs),
                            [
                                {"model_id": new.id, "sha256": sha, "size": size}
                                for sha, size in sorted(set(new.pending))
                            ],
                        )
                    # Stored content this model names is in use from now on: the collector leaves it.
                    shas = sorted({f.sha256 for f in new.files})
                    for i in range(0, len(shas), 500):
                        conn.execute(
                            update(t.blobs)
                            .where(t.blobs.c.sha256.in_(shas[i : i + 500]))
                            .values(touched_at=new.created_at)
                        )
                break
            except sa_exc.IntegrityError:
                # Two uploads of the same name raced for the same version: take the next one. (Or
                # for the same upload key: the next attempt finds the other's model.)
                if attempt == 49:
                    raise
        model = self.get_model(new.id, with_files=False)
        assert model is not None
        return model

    def visible_blobs(self, project_ids: tuple[str, ...] | None, shas: Iterable[str]) -> set[str]:
        """The digests among ``shas`` that ready models in these projects (None: any) already hold."""
        wanted = sorted(set(shas))
        found: set[str] = set()
        with self._read() as conn:
            for i in range(0, len(wanted), 500):
                stmt = (
                    select(t.model_files.c.sha256)
                    .join(t.models, t.models.c.id == t.model_files.c.model_id)
                    .where(t.model_files.c.sha256.in_(wanted[i : i + 500]), t.models.c.state == "ready")
                    .distinct()
                )
                if project_ids is not None:
                    stmt = stmt.where(t.models.c.project_id.in_(project_ids))
                found.update(conn.scalars(stmt))
        return found

    def find_upload(self, project_id: str, upload_key: str, created_by: str) -> str | None:
        """The still-uploading model an earlier run with this key started, if any."""
        with self._read() as conn:
            return self._find_upload(conn, project_id, upload_key, created_by)

    @staticmethod
    def _find_upload(conn: Connection, project_id: str, upload_key: str, created_by: str) -> str | None:
        return conn.scalar(
            select(t.models.c.id).where(
                t.models.c.project_id == project_id,
                t.models.c.upload_key == upload_key,
                t.models.c.created_by == created_by,
                t.models.c.state == "uploading",
            )
        )

    def get_fact(self, name: str) -> str | None:
        with self._read() as conn:
            value: str | None = conn.scalar(
                select(t.server_facts.c.value).where(t.server_facts.c.name == name)
            )
            return value

    def set_fact_once(self, name: str, value: str) -> str:
        """Record ``value`` under ``name`` unless a value is there already; the value that is there now."""
        with self._tx() as conn:
            self._insert_fact(conn, name, value)
            return str(conn.scalar(select(t.server_facts.c.value).where(t.server_facts.c.name == name)))

    @staticmethod
    def _insert_fact(conn: Connection, name: str, value: str) -> bool:
        """Insert the fact unless one of that name is there (waiting for another transaction that
        inserts it at once); whether this one did."""
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        inserted = conn.scalar(
            dialect_insert(t.server_facts)
            .values(name=name, value=value)
            .on_conflict_do_nothing()
            .returning(t.server_facts.c.name)  # (rowcount is -1 here with psycopg)
        )
        return inserted is not None

    def release_upload_key(self, model_id: str) -> None:
        """Take the upload key from an uploading model: a new upload with other files takes it over."""
        with self._tx() as conn:
            conn.execute(update(t.models).where(t.models.c.id == model_id).values(upload_key=None))

    def mark_received(self, model_id: str, *shas: str) -> None:
        wanted = sorted(set(shas))
        with self._tx() as conn:
            for i in range(0, len(wanted), 500):
                conn.execute(
                    delete(t.pending_blobs).where(
                        t.pending_blobs.c.model_id == model_id,
                        t.pending_blobs.c.sha256.in_(wanted[i : i + 500]),
                    )
                )

    _MODEL_COLS = (
        t.models.c.seq,
        t.models.c.id,
        t.models.c.project_id,
        t.models.c.name,
        t.models.c.version,
        t.models.c.type,
        t.models.c.state,
        t.models.c.summary,
        t.models.c.notes,
        t.models.c.metadata,
        t.models.c.dataset_ref,
        t.models.c.source,
        t.models.c.created_at,
        t.models.c.created_by,
        t.models.c.size,
        t.models.c.file_count,
        t.models.c.deployment_state,
        t.models.c.workload_id,
    )

    def _to_models(
        self, conn: Connection, rows: Sequence[RowMapping], files: dict[str, list[ModelFile]] | None = None
    ) -> list[Model]:
        tags: dict[str, list[str]] = defaultdict(list)
        if rows:
            for mid, tag in conn.execute(
                select(t.model_tags.c.model_id, t.model_tags.c.tag)
                .where(t.model_tags.c.model_id.in_([r["id"] for r in rows]))
                .order_by(t.model_tags.c.tag)
            ):
                tags[mid].append(tag)
        return [
            Model(
                id=r["id"],
                project_id=r["project_id"],
                name=r["name"],
                version=r["version"],
                type=r["type"],
                state=r["state"],
                summary=r["summary"] or {},
                notes=r["notes"],
                tags=tuple(tags[r["id"]]),
                metadata=r["metadata"] or {},
                dataset_ref=r["dataset_ref"],
                source=r["source"],
                created_at=t.utc(r["created_at"]),  # type: ignore[arg-type]
                created_by=r["created_by"],
                size=r["size"],
                file_count=r["file_count"],
                storage_location="",
                deployment_state=r["deployment_state"],
                files=None if files is None else tuple(files.get(r["id"], ())),
                workload_id=r["workload_id"],
                # Only a single model's row carries its series (lists leave them out).
                series=(r["series"] or {}) if "series" in r else None,
            )
            for r in rows
        ]

    def get_model(self, model_id: str, *, with_files: bool = False) -> Model | None:
        with self._read() as conn:
            rows = list(
                conn.execute(
                    select(*self._MODEL_COLS, t.models.c.series).where(t.models.c.id == model_id)
                ).mappings()
            )
            if not rows:
                return None
            files = {model_id: self._files(conn, model_id)} if with_files else None
            return self._to_models(conn, rows, files)[0]

    def list_models(self, query: ModelQuery) -> tuple[list[Model], int | None]:
        """One page, newest first: the seqs are found on an index alone, then their rows fetched.

        (Selecting the page's keys first keeps PostgreSQL on the filter's index instead of walking
        the primary key newest-first and discarding other projects' rows.)
        """
        m = t.models
        stmt = select(m.c.seq)
        seq_col = m.c.seq
        if query.tag is not None:
            # Drive the scan from the (tag, seq) index, newest first.
            stmt = stmt.join(t.model_tags, t.model_tags.c.model_id == m.c.id).where(
                t.model_tags.c.tag == query.tag
            )
            seq_col = t.model_tags.c.seq
        if query.project_ids is not None:
            if len(query.project_ids) == 1:
                stmt = stmt.where(m.c.project_id == query.project_ids[0])
            else:
                stmt = stmt.where(m.c.project_id.in_(query.project_ids))
        if query.name is not None:
            stmt = stmt.where(m.c.name == query.name)
        if query.type is not None:
            stmt = stmt.where(m.c.type == query.type)
        if query.state is not None:
            stmt = stmt.where(m.c.state == query.state)
        if query.before_seq is not None:
            stmt = stmt.where(seq_col < query.before_seq)
        page = stmt.order_by(seq_col.desc()).limit(query.limit + 1)
        with self._read() as conn:
            seqs = list(conn.scalars(page))
            if not seqs:
                return [], None
            rows = list(
                conn.execute(
                    select(*self._MODEL_COLS).where(m.c.seq.in_(seqs)).order_by(m.c.seq.desc())
                ).mappings()
            )
            more = len(rows) > query.limit
            rows = rows[: query.limit]
            cursor = rows[-1]["seq"] if more and rows else None
            return self._to_models(conn, rows), cursor

    def update_model(self, model_id: str, **fields: Any) -> None:
        with self._tx() as conn:
            conn.execute(update(t.models).where(t.models.c.id == model_id).values(**fields))

    def set_model_tags(self, model_id: str, tags: Iterable[str]) -> None:
        with self._tx() as conn:
            seq = conn.scalar(select(t.models.c.seq).where(t.models.c.id == model_id))
            conn.execute(delete(t.model_tags).where(t.model_tags.c.model_id == model_id))
            wanted = sorted(set(tags))
            if wanted and seq is not None:
                conn.execute(
                    insert(t.model_tags), [{"model_id": model_id, "tag": tag, "seq": seq} for tag in wanted]
                )

    def delete_model(self, model_id: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(t.aliases).where(t.aliases.c.model_id == model_id))
            conn.execute(delete(t.model_tags).where(t.model_tags.c.model_id == model_id))
            conn.execute(delete(t.model_files).where(t.model_files.c.model_id == model_id))
            conn.execute(delete(t.pending_blobs).where(t.pending_blobs.c.model_id == model_id))
            conn.execute(delete(t.models).where(t.models.c.id == model_id))

    def _files(self, conn: Connection, model_id: str, *where: Any) -> list[ModelFile]:
        """The model's files (those matching ``where`` too), by path."""
        columns = (t.model_files.c.path, t.model_files.c.size, t.model_files.c.sha256)
        rows = conn.execute(
            select(*columns)
            .where(t.model_files.c.model_id == model_id, *where)
            .order_by(t.model_files.c.path)
        )
        return [ModelFile(path=r.path, size=r.size, sha256=r.sha256) for r in rows]

    def model_files(self, model_id: str) -> list[ModelFile]:
        with self._read() as conn:
            return self._files(conn, model_id)

    def model_files_at(self, model_id: str, paths: Sequence[str]) -> dict[str, ModelFile]:
        """The model's files at ``paths`` (those it has), by path."""
        wanted = sorted(set(paths))
        with self._read() as conn:
            return {
                f.path: f
                for i in range(0, len(wanted), 500)
                for f in self._files(conn, model_id, t.model_files.c.path.in_(wanted[i : i + 500]))
            }

    def manifest_sizes(self, model_id: str) -> dict[str, int]:
        """{sha256: size} of the model's files."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.model_files.c.sha256, t.model_files.c.size).where(
                    t.model_files.c.model_id == model_id
                )
            )
            return {sha256: int(size) for sha256, size in rows}

    def get_model_file(self, model_id: str, path: str) -> ModelFile | None:
        return self.model_files_at(model_id, [path]).get(path)

    def expired_uploads(self, now: datetime) -> list[str]:
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(t.models.c.id).where(t.models.c.state == "uploading", t.models.c.expires_at < now)
                )
            )

    # -- aliases -----------------------------------------------------------------------------------

    def set_alias(self, alias: Alias) -> None:
        values = {
            "project_id": alias.project_id,
            "model_name": alias.model_name,
            "alias": alias.alias,
            "model_id": alias.model_id,
            "updated_at": alias.updated_at,
            "updated_by": alias.updated_by,
        }
        with self._tx() as conn:
            # One statement, not a look and then an insert: replicas creating the same alias at once
            # both inserted, and one failed with a duplicate key (a 500).
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = dialect_insert(t.aliases).values(**values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[t.aliases.c.project_id, t.aliases.c.model_name, t.aliases.c.alias],
                    set_={
                        "model_id": stmt.excluded.model_id,
                        "updated_at": stmt.excluded.updated_at,
                        "updated_by": stmt.excluded.updated_by,
                    },
                )
            )
            conn.execute(
                insert(t.alias_history).values(
                    project_id=alias.project_id,
                    model_name=alias.model_name,
                    alias=alias.alias,
                    model_id=alias.model_id,
                    at=alias.updated_at,
                    by=alias.updated_by,
                )
            )

    @staticmethod
    def _alias(r: Any) -> Alias:
        return Alias(
            project_id=r.project_id,
            model_name=r.model_name,
            alias=r.alias,
            model_id=r.model_id,
            updated_at=t.utc(r.updated_at),  # type: ignore[arg-type]
            updated_by=r.updated_by,
        )

    def get_alias(self, project_id: str, model_name: str, alias: str) -> Alias | None:
        with self._read() as conn:
            r = conn.execute(
                select(t.aliases).where(
                    t.aliases.c.project_id == project_id,
                    t.aliases.c.model_name == model_name,
                    t.aliases.c.alias == alias,
                )
            ).first()
        return None if r is None else self._alias(r)

    def list_aliases(self, project_id: str) -> list[Alias]:
        with self._read() as conn:
            rows = conn.execute(
                select(t.aliases)
                .where(t.aliases.c.project_id == project_id)
                .order_by(t.aliases.c.model_name, t.aliases.c.alias)
            )
            return [self._alias(r) for r in rows]

    def delete_alias(self, project_id: str, model_name: str, alias: str, by: str) -> None:
        with self._tx() as conn:
            conn.execute(
                delete(t.aliases).where(
                    t.aliases.c.project_id == project_id,
                    t.aliases.c.model_name == model_name,
                    t.aliases.c.alias == alias,
                )
            )
            conn.execute(
                insert(t.alias_history).values(
                    project_id=project_id,
                    model_name=model_name,
                    alias=alias,
                    model_id=None,
                    at=datetime.now(UTC),
                    by=by,
                )
            )

    # -- API keys ----------------------------------------------------------------------------------

    def create_key(self, key: ApiKey, secret_hash: str) -> None:
        with self._tx() as conn:
            self._insert_key(conn, key, secret_hash)

    @staticmethod
    def _insert_key(conn: Connection, key: ApiKey, secret_hash: str) -> None:
        conn.execute(
            insert(t.api_keys).values(
                id=key.id,
                secret_hash=secret_hash,
                name=key.name,
                user=key.user,
                is_admin=key.is_admin,
                created_at=key.created_at,
            )
        )
        for project_id, role in key.roles.items():
            conn.execute(insert(t.key_roles).values(key_id=key.id, project_id=project_id, role=role))

    def _keys(self, conn: Connection, where: Any) -> list[tuple[ApiKey, str]]:
        rows = list(conn.execute(select(t.api_keys).where(where).order_by(t.api_keys.c.created_at)))
        roles: dict[str, dict[str, str]] = defaultdict(dict)
        if rows:
            for kid, pid, role in conn.execute(
                select(t.key_roles.c.key_id, t.key_roles.c.project_id, t.key_roles.c.role).where(
                    t.key_roles.c.key_id.in_([r.id for r in rows])
                )
            ):
                roles[kid][pid] = role
        return [
            (
                ApiKey(
                    id=r.id,
                    name=r.name,
                    user=r.user,
                    is_admin=r.is_admin,
                    roles=roles[r.id],
                    created_at=t.utc(r.created_at),  # type: ignore[arg-type]
                    revoked=r.revoked_at is not None,
                ),
                r.secret_hash,
            )
            for r in rows
        ]

    def get_key(self, key_id: str) -> StoredKey | None:
        with self._read() as conn:
            found = self._keys(conn, t.api_keys.c.id == key_id)
        return StoredKey(key=found[0][0], secret_hash=found[0][1]) if found else None

    def find_key_by_hash(self, secret_hash: str) -> StoredKey | None:
        with self._read() as conn:
            found = self._keys(conn, t.api_keys.c.secret_hash == secret_hash)
        return StoredKey(key=found[0][0], secret_hash=found[0][1]) if found else None

    def rename_model(self, model_id: str, new_name: str) -> None:
        for attempt in range(50):
            try:
                with self._tx() as conn:
                    project_id = conn.scalar(select(t.models.c.project_id).where(t.models.c.id == model_id))
                    version = self._next_version(conn, str(project_id), new_name)
                    conn.execute(
                        update(t.models)
                        .where(t.models.c.id == model_id)
                        .values(name=new_name, version=version)
                    )
                return
            except sa_exc.IntegrityError:
                if attempt == 49:
                    raise

    def list_keys(self, project_id: str | None) -> list[ApiKey]:
        where: Any = True
        if project_id is not None:
            where = t.api_keys.c.id.in_(
                select(t.key_roles.c.key_id).where(t.key_roles.c.project_id == project_id)
            )
        with self._read() as conn:
            return [k for k, _ in self._keys(conn, where)]

    def revoke_key(self, key_id: str, at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.api_keys).where(t.api_keys.c.id == key_id).values(revoked_at=at))

    def create_first_key(self, key: ApiKey, secret_hash: str) -> bool:
        """Create ``key`` if it is the first ever (the bootstrap admin); False if another came first.

        The ``bootstrap`` fact is the turnstile: its insert waits for (PostgreSQL) or is serialized
        with (SQLite) another's, and only the one that inserts it goes on, if there is still no key.
        """
        with self._tx() as conn:
            if not self._insert_fact(conn, "bootstrap", key.id) or conn.scalar(
                select(func.count()).select_from(t.api_keys)
            ):
                return False
            self._insert_key(conn, key, secret_hash)
            return True

    def count_keys(self) -> int:
        with self._read() as conn:
            return int(conn.scalar(select(func.count()).select_from(t.api_keys)) or 0)

    def grant_role(self, key_id: str, project_id: str, role: str) -> None:
        with self._tx() as conn:
            conn.execute(
                delete(t.key_roles).where(
                    t.key_roles.c.key_id == key_id, t.key_roles.c.project_id == project_id
                )
            )
            conn.execute(insert(t.key_roles).values(key_id=key_id, project_id=project_id, role=role))

    # -- files of a model created without them (the Gradient upload) ------------------------------

    def attach_files(self, model_id: str, files: Sequence[ModelFile]) -> bool:
        """Give an uploading model that has no files yet these files, atomically and only once.

        Returns False (and changes nothing) when the model is gone, no longer uploading, or already
        has files: of two requests racing to attach, exactly one wins.
        """
        with self._tx() as conn:
            claimed = conn.execute(
                update(t.models)
                .where(t.models.c.id == model_id, t.models.c.state == "uploading", t.models.c.file_count == 0)
                .values(size=sum(f.size for f in files), file_count=len(files))
            )
            if claimed.rowcount != 1:
                return False
            if files:
                conn.execute(
                    insert(t.model_files),
                    [
                        {"model_id": model_id, "path": f.path, "size": f.size, "sha256": f.sha256}
                        for f in files
                    ],
                )
        return True

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _replace_tags(conn: Connection, table: Any, fk: str, owner: str, tags: Iterable[str]) -> None:
        conn.execute(delete(table).where(table.c[fk] == owner))
        wanted = sorted(set(tags))
        if wanted:
            conn.execute(insert(table), [{fk: owner, "tag": tag} for tag in wanted])
