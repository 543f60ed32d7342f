"""stagings: large-file parts sent while the client still hashes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 17:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stagings",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("project_id", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_stagings_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stagings")),
    )
    with op.batch_alter_table("stagings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stagings_created_by"), ["created_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_stagings_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stagings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stagings_expires_at"))
        batch_op.drop_index(batch_op.f("ix_stagings_created_by"))
    op.drop_table("stagings")
