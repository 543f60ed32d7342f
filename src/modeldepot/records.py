"""Plain frozen records shared by the server and the SDK.

The server builds them from the metadata store and serialises them with :func:`to_json`; the SDK
rebuilds them from JSON with ``from_json``. They carry no behaviour beyond that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

MODEL_TYPES = ("Tensorflow", "ONNX", "Custom")
MODEL_STATES = ("uploading", "ready", "failed")
# running → (uploading →) succeeded, or failed / interrupted; only a succeeded workload has a model.
WORKLOAD_STATES = ("running", "uploading", "succeeded", "failed", "interrupted")
ROLES = ("viewer", "editor", "admin")


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclasses.dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: datetime
    created_by: str
    model_count: int = 0
    tags: tuple[str, ...] = ()
    repo_name: str | None = None
    repo_url: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Project:
        return cls(
            id=d["id"],
            name=d["name"],
            created_at=_dt(d["created_at"]),  # type: ignore[arg-type]
            created_by=d.get("created_by", ""),
            model_count=int(d.get("model_count", 0)),
            tags=tuple(d.get("tags", ())),
            repo_name=d.get("repo_name"),
            repo_url=d.get("repo_url"),
        )


@dataclasses.dataclass(frozen=True)
class ModelFile:
    path: str
    size: int
    sha256: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelFile:
        return cls(path=d["path"], size=int(d["size"]), sha256=d["sha256"])


@dataclasses.dataclass(frozen=True)
class Model:
    id: str
    project_id: str
    name: str
    version: int
    type: str
    state: str
    summary: dict[str, Any]
    notes: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    dataset_ref: str | None
    source: str
    created_at: datetime
    created_by: str
    size: int
    file_count: int
    storage_location: str
    deployment_state: str | None = None
    files: tuple[ModelFile, ...] | None = None
    workload_id: str | None = None  # the workload that made it (lineage), if any
    # Metric series for charts, {"loss": {"steps": [0, 1], "values": [0.9, 0.5]}}; None in lists.
    series: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Model:
        files = d.get("files")
        return cls(
            id=d["id"],
            project_id=d["project_id"],
            name=d["name"],
            version=int(d["version"]),
            type=d["type"],
            state=d["state"],
            summary=dict(d.get("summary") or {}),
            notes=d.get("notes") or "",
            tags=tuple(d.get("tags") or ()),
            metadata=dict(d.get("metadata") or {}),
            dataset_ref=d.get("dataset_ref"),
            source=d.get("source", "upload"),
            created_at=_dt(d["created_at"]),  # type: ignore[arg-type]
            created_by=d.get("created_by", ""),
            size=int(d.get("size", 0)),
            file_count=int(d.get("file_count", 0)),
            storage_location=d.get("storage_location", ""),
            deployment_state=d.get("deployment_state"),
            files=None if files is None else tuple(ModelFile.from_json(f) for f in files),
            workload_id=d.get("workload_id"),
            series=d.get("series"),
        )


@dataclasses.dataclass(frozen=True)
class Workload:
    """A recorded run of a command (or a block of Python) whose output became a model: its lineage."""

    id: str
    project_id: str
    name: str  # of the model it makes
    state: str
    command: tuple[str, ...]
    working_dir: str | None
    exit_code: int | None
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None
    host: str
    user: str  # the operating-system user who ran it
    created_by: str  # the API key's user
    git_commit: str | None
    git_branch: str | None
    git_dirty: bool | None
    env: dict[str, str]  # only the variables named with --env-keep
    summary: dict[str, Any]
    series: dict[str, Any]
    error: str | None
    dataset_ref: str | None
    log_bytes: int  # of output the run wrote; the stored log keeps its head and tail
    model_id: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Workload:
        return cls(
            id=d["id"],
            project_id=d["project_id"],
            name=d["name"],
            state=d["state"],
            command=tuple(d.get("command") or ()),
            working_dir=d.get("working_dir"),
            exit_code=d.get("exit_code"),
            started_at=_dt(d["started_at"]),  # type: ignore[arg-type]
            ended_at=_dt(d.get("ended_at")),
            duration_seconds=d.get("duration_seconds"),
            host=d.get("host", ""),
            user=d.get("user", ""),
            created_by=d.get("created_by", ""),
            git_commit=d.get("git_commit"),
            git_branch=d.get("git_branch"),
            git_dirty=d.get("git_dirty"),
            env=dict(d.get("env") or {}),
            summary=dict(d.get("summary") or {}),
            series=dict(d.get("series") or {}),
            error=d.get("error"),
            dataset_ref=d.get("dataset_ref"),
            log_bytes=int(d.get("log_bytes") or 0),
            model_id=d.get("model_id"),
        )


@dataclasses.dataclass(frozen=True)
class Alias:
    project_id: str
    model_name: str
    alias: str
    model_id: str
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Alias:
        return cls(
            project_id=d["project_id"],
            model_name=d["model_name"],
            alias=d["alias"],
            model_id=d["model_id"],
            updated_at=_dt(d["updated_at"]),  # type: ignore[arg-type]
            updated_by=d.get("updated_by", ""),
        )


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """An API key as listed: never the secret itself."""

    id: str
    name: str
    user: str
    is_admin: bool
    roles: dict[str, str]
    created_at: datetime
    revoked: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ApiKey:
        return cls(
            id=d["id"],
            name=d.get("name", ""),
            user=d.get("user", ""),
            is_admin=bool(d.get("is_admin")),
            roles=dict(d.get("roles") or {}),
            created_at=_dt(d["created_at"]),  # type: ignore[arg-type]
            revoked=bool(d.get("revoked")),
        )


@dataclasses.dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``secret`` is shown this once and never stored."""

    key: ApiKey
    secret: str


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None


def to_json(value: Any) -> Any:
    """Records (and containers of them) as JSON-ready values; datetimes as ISO-8601 in UTC."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value
