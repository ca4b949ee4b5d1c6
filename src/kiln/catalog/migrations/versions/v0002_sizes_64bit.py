"""Byte counts are 64-bit (a 2 GiB layer overflowed images.size on PostgreSQL); the
hand-made schema fingerprint table goes, alembic_version replaces it.

Revision ID: 0002_sizes_64bit
Revises: 0001_first
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sizes_64bit"
down_revision = "0001_first"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite: the batch copies the table (kiln runs it with foreign keys off, then checks
    # them); PostgreSQL: ALTER COLUMN ... TYPE BIGINT.
    with op.batch_alter_table("images") as batch:
        batch.alter_column(
            "size", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )
    op.drop_table("kiln_schema")


def downgrade() -> None:
    op.create_table("kiln_schema", sa.Column("fingerprint", sa.String(64), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.alter_column(
            "size", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
