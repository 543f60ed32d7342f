"""The workload rows of the metadata store (a mixin of SqlMetadataStore).

A workload's model is the one whose ``models.workload_id`` names it: the link lives on one side only,
so deleting the model leaves nothing dangling. Finishing a workload and claiming its model happen in
one transaction, each guarded by the state it expects, so two racing requests cannot both win.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, select, update

from ..records import Workload
from ..services.ports import ModelLink, WorkloadQuery
from . import tables as t

w = t.workloads

_COLS = (
    w.c.seq,
    w.c.id,
    w.c.project_id,
    w.c.name,
    w.c.state,
    w.c.command,
    w.c.working_dir,
    w.c.exit_code,
    w.c.started_at,
    w.c.ended_at,
    w.c.host,
    w.c.user,
    w.c.created_by,
    w.c.git_commit,
    w.c.git_branch,
    w.c.git_dirty,
    w.c.env,
    w.c.summary,
    w.c.series,
    w.c.error,
    w.c.dataset_ref,
    w.c.log_bytes,
    t.models.c.id.label("model_id"),
)


class _Rolledback(Exception):
    """Raised inside a transaction to undo it when a guarded update found nothing to change."""


def _workload(r: RowMapping) -> Workload:
    started = t.utc(r["started_at"])
    ended = t.utc(r["ended_at"])
    assert started is not None
    return Workload(
        id=r["id"],
        project_id=r["project_id"],
        name=r["name"],
        state=r["state"],
        command=tuple(r["command"] or ()),
        working_dir=r["working_dir"],
        exit_code=r["exit_code"],
        started_at=started,
        ended_at=ended,
        duration_seconds=None if ended is None else round((ended - started).total_seconds(), 3),
        host=r["host"],
        user=r["user"],
        created_by=r["created_by"],
        git_commit=r["git_commit"],
        git_branch=r["git_branch"],
        git_dirty=r["git_dirty"],
        env=r["env"] or {},
        summary=r["summary"] or {},
        series=r["series"] or {},
        error=r["error"],
        dataset_ref=r["dataset_ref"],
        log_bytes=int(r["log_bytes"]),
        model_id=r["model_id"],
    )


def _select() -> Any:
    return select(*_COLS).outerjoin(t.models, t.models.c.workload_id == w.c.id)


class WorkloadRows:
    _tx: Callable[[], AbstractContextManager[Connection]]
    _read: Callable[[], AbstractContextManager[Connection]]

    def create_workload(self, workload: Workload, log: str) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(w).values(
                    id=workload.id,
                    project_id=workload.project_id,
                    name=workload.name,
                    state=workload.state,
                    command=list(workload.command),
                    working_dir=workload.working_dir,
                    exit_code=workload.exit_code,
                    started_at=workload.started_at,
                    ended_at=workload.ended_at,
                    host=workload.host,
                    user=workload.user,
                    created_by=workload.created_by,
                    git_commit=workload.git_commit,
                    git_branch=workload.git_branch,
                    git_dirty=workload.git_dirty,
                    env=workload.env,
                    summary=workload.summary,
                    series=workload.series,
                    error=workload.error,
                    dataset_ref=workload.dataset_ref,
                    log=log,
                    log_bytes=workload.log_bytes,
                )
            )

    def get_workload(self, workload_id: str) -> Workload | None:
        with self._read() as conn:
            row = conn.execute(_select().where(w.c.id == workload_id)).mappings().first()
        return None if row is None else _workload(row)

    def list_workloads(self, query: WorkloadQuery) -> tuple[list[Workload], int | None]:
        """One page, newest first, and the seq to continue before (None: no more)."""
        stmt = _select()
        if query.project_ids is not None:
            stmt = stmt.where(w.c.project_id.in_(query.project_ids))
        if query.commit is not None:
            stmt = stmt.where(w.c.git_commit.startswith(query.commit, autoescape=True))
        if query.state is not None:
            stmt = stmt.where(w.c.state == query.state)
        if query.name is not None:
            stmt = stmt.where(w.c.name == query.name)
        if query.before_seq is not None:
            stmt = stmt.where(w.c.seq < query.before_seq)
        stmt = stmt.order_by(w.c.seq.desc()).limit(query.limit + 1)
        with self._read() as conn:
            rows = list(conn.execute(stmt).mappings())
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return [_workload(r) for r in rows], (rows[-1]["seq"] if more and rows else None)

    def workload_log(self, workload_id: str) -> str | None:
        with self._read() as conn:
            log: str | None = conn.scalar(select(w.c.log).where(w.c.id == workload_id))
        return log

    def update_workload(
        self,
        workload_id: str,
        from_states: tuple[str, ...],
        fields: dict[str, Any],
        link: ModelLink | None = None,
    ) -> bool:
        """Change a workload still in one of ``from_states`` and, with ``link``, claim its model.

        Returns False, changing nothing, when the workload left those states meanwhile or the model
        is no longer ready and unclaimed.
        """
        try:
            with self._tx() as conn:
                done = conn.execute(
                    update(w).where(w.c.id == workload_id, w.c.state.in_(from_states)).values(**fields)
                )
                if done.rowcount != 1:
                    raise _Rolledback
                if link is not None:
                    m = t.models
                    claimed = conn.execute(
                        update(m)
                        .where(m.c.id == link.model_id, m.c.state == "ready", m.c.workload_id.is_(None))
                        .values(workload_id=workload_id, source="workload", series=link.series)
                    )
                    if claimed.rowcount != 1:
                        raise _Rolledback
        except _Rolledback:
            return False
        return True
