"""Table definitions. Changing them means adding an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger primary keys autoincrement on PostgreSQL; SQLite wants INTEGER for its rowid alias.
Seq = BigInteger().with_variant(Integer(), "sqlite")
TS = DateTime(timezone=True)


def utc(value: datetime | None) -> datetime | None:
    """A TS column's value as an aware UTC datetime (SQLite hands them back naive)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


projects = Table(
    "projects",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("repo_name", String(200)),
    Column("repo_url", String(2000)),
)

project_tags = Table(
    "project_tags",
    metadata,
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(100), primary_key=True),
)

models = Table(
    "models",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(16), nullable=False, unique=True),
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("summary", JSON, nullable=False),
    Column("notes", Text, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("dataset_ref", String(500)),
    Column("source", String(20), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("expires_at", TS),
    Column("deployment_state", String(40)),
    # Set by clients so that re-running an interrupted upload resumes the same model.
    Column("upload_key", String(64)),
    # The workload that made this model (lineage; at most one model per workload) and its metric
    # series, {"loss": {"steps": [...], "values": [...]}}, for charts.
    Column("workload_id", String(16)),
    Column("series", JSON),
    UniqueConstraint("project_id", "name", "version"),
    Index(None, "workload_id", unique=True),
    # At most one uploading model per upload key: the same upload started twice at once (two
    # replicas, say) resumes one model instead of making two.
    Index(
        "ix_models_uploading_key",
        "project_id",
        "created_by",
        "upload_key",
        unique=True,
        sqlite_where=text("state = 'uploading'"),
        postgresql_where=text("state = 'uploading'"),
    ),
    # Keyset pagination (newest first) within each filter the list offers.
    Index(None, "project_id", "state", "seq"),
    Index(None, "project_id", "name", "state", "seq"),
    Index(None, "name", "state", "seq"),
    Index(None, "state", "seq"),
    Index(None, "type", "state", "seq"),
    Index(None, "expires_at"),
)

# Recorded runs of a command (or a block of Python) that make a model: the lineage of that model.
# The model points here (models.workload_id); a workload's model is found through that column.
workloads = Table(
    "workloads",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(16), nullable=False, unique=True),
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("command", JSON, nullable=False),
    Column("working_dir", Text),
    Column("exit_code", Integer),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS),
    Column("host", String(255), nullable=False),
    Column("user", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("git_commit", String(64)),
    Column("git_branch", String(255)),
    Column("git_dirty", Boolean),
    Column("env", JSON, nullable=False),
    Column("summary", JSON, nullable=False),
    Column("series", JSON, nullable=False),
    Column("error", Text),
    Column("dataset_ref", String(500)),
    # The captured output, bounded by the client (head and tail kept), and how long it really was.
    Column("log", Text, nullable=False),
    Column("log_bytes", BigInteger, nullable=False),
    Index(None, "project_id", "seq"),
    Index(None, "git_commit", "seq"),
)

# The last version handed out per (project, name): versions are never reused, even after a delete.
model_names = Table(
    "model_names",
    metadata,
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("last_version", Integer, nullable=False),
)

# Blobs an uploading model still has to receive. Content the server already holds counts as
# received only when the uploader can already read it elsewhere, so knowing a sha256 is never
# enough to claim someone else's bytes.
pending_blobs = Table(
    "pending_blobs",
    metadata,
    Column("model_id", String(16), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False, server_default="0"),
    # Large blobs arrive in parts into a staging area of the blob store (made on first use).
    Column("staging_id", String(200)),
    Column("part_size", BigInteger),
    Index(None, "sha256"),
)

# Staging areas opened before their content's sha256 is known: a client sends a large file's parts
# while it is still hashing it, then names the staging area in its manifest, and the upload adopts it
# (the row goes, the pending blob takes the staging area). Rows that nobody adopted expire.
stagings = Table(
    "stagings",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("part_size", BigInteger, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Index(None, "created_by"),
    Index(None, "expires_at"),
)

# Every blob the blob store holds, with when it was last published or named by an upload: the
# garbage collector deletes only rows no file or upload references and untouched for a grace period,
# holding the row (lock) while it deletes the bytes; publishing takes the same row.
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("touched_at", TS, nullable=False),
    Index(None, "touched_at"),
)

model_tags = Table(
    "model_tags",
    metadata,
    Column("model_id", String(16), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(100), primary_key=True),
    # A copy of models.seq, so that "models with tag T, newest first" is one index range scan.
    Column("seq", Seq, nullable=False),
    Index(None, "tag", "seq"),
)

model_files = Table(
    "model_files",
    metadata,
    Column("model_id", String(16), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Index(None, "sha256"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("model_name", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("model_id", String(16), ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("updated_by", String(200), nullable=False),
)

alias_history = Table(
    "alias_history",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("model_id", String(16)),  # NULL when the alias was deleted
    Column("at", TS, nullable=False),
    Column("by", String(200), nullable=False),
    Index(None, "project_id", "model_name", "alias"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("user", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS),
    Index(None, "secret_hash", unique=True),
)

key_roles = Table(
    "key_roles",
    metadata,
    Column("key_id", String(16), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", String(16), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(10), nullable=False),
    Index(None, "project_id"),
)

# Facts about this installation as a whole, by name: ``blob_store_id`` is the id written as a marker
# into the blob store this database uses (checked at start, so that a server pointed at another
# database's store, or this database at another store, stops instead of serving and collecting).
server_facts = Table(
    "server_facts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
