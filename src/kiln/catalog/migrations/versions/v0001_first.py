"""The catalog as kiln 0.1.0 (commit 5b7c126) made it, before migrations.

Such a catalog has no alembic_version table: kiln recognises it by its tables and stamps
it at this revision before upgrading it.

Revision ID: 0001_first
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_first"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("config_digest", sa.String(80), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("cache_key", sa.String(64), nullable=False),
        sa.Column("recipe_path", sa.Text(), nullable=False),
        sa.Column("recipe_digest", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
        sa.ForeignKeyConstraint(["parent_id"], ["images.id"]),
    )
    for column in ("cache_key", "digest", "parent_id", "name"):
        op.create_index(f"ix_images_{column}", "images", [column])
    op.create_table("kiln_schema", sa.Column("fingerprint", sa.String(64), nullable=True))
    op.create_table(
        "packages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("architecture", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
    )
    op.create_index("ix_packages_image_id", "packages", ["image_id"])
    op.create_table(
        "artefacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("manifest_digest", sa.String(80), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
    )
    op.create_index("ix_artefacts_image_id", "artefacts", ["image_id"])
    op.create_table(
        "machines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("image_ref", sa.String(80), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("nspawn_pid", sa.Integer(), nullable=False),
        sa.Column("leader_pid", sa.Integer(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("secret_keys", sa.Text(), nullable=False),
        sa.Column("volumes", sa.Text(), nullable=False),
        sa.Column("throwaway", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
    )
    op.create_index("ix_machines_name", "machines", ["name"])
    op.create_index("ix_machines_image_id", "machines", ["image_id"])
    op.create_table(
        "test_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("machine", sa.String(64), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("healthy_seconds", sa.Float(), nullable=True),
        sa.Column("results", sa.Text(), nullable=False),
        sa.Column("converge", sa.Boolean(), nullable=True),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
    )
    op.create_index("ix_test_runs_image_id", "test_runs", ["image_id"])


def downgrade() -> None:
    for table in ("test_runs", "machines", "artefacts", "packages", "kiln_schema", "images"):
        op.drop_table(table)
