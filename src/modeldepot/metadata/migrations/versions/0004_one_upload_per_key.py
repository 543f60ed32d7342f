"""one uploading model per upload key: replicas starting the same upload at once resume one model

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 23:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UPLOADING = sa.text("state = 'uploading'")


def upgrade() -> None:
    # Duplicates that the race this index closes made before: the newest of each keeps the key (it
    # is the one a rerun resumed); the others can no longer be resumed and expire as before.
    op.execute(
        "UPDATE models SET upload_key = NULL WHERE state = 'uploading' AND upload_key IS NOT NULL "
        "AND seq NOT IN (SELECT max(seq) FROM models WHERE state = 'uploading' "
        "AND upload_key IS NOT NULL GROUP BY project_id, created_by, upload_key)"
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_project_id_upload_key"))
        batch_op.create_index(
            "ix_models_uploading_key",
            ["project_id", "created_by", "upload_key"],
            unique=True,
            sqlite_where=_UPLOADING,
            postgresql_where=_UPLOADING,
        )


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_uploading_key")
        batch_op.create_index(
            batch_op.f("ix_models_project_id_upload_key"), ["project_id", "upload_key"], unique=False
        )
