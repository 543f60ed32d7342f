"""The metadata store: SQLAlchemy 2 tables, queries and Alembic migrations (SQLite and PostgreSQL)."""

from .store import SqlMetadataStore

__all__ = ["SqlMetadataStore"]
