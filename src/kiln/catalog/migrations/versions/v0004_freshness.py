"""Images that must not age: update sightings (when kiln first saw each newer package
version), rebuild proofs, and propagation runs with the state of each image in them.

Revision ID: 0004_freshness
Revises: 0003_lifecycle
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_freshness"
down_revision = "0003_lifecycle"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "update_sightings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("package", sa.String(128), nullable=False),
        sa.Column("architecture", sa.String(32), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("suite", sa.String(128), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("first_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("package", "architecture", "version", "suite"),
    )
    op.create_table(
        "proofs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("rebuilt", sa.String(80), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("package_cache", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_proofs_image_id", "proofs", ["image_id"])
    op.create_table(
        "propagations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(80), nullable=False),
        sa.Column("origin_digest", sa.String(80), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("finished", TIME, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_propagations_origin", "propagations", ["origin_digest", "channel"])
    op.create_table(
        "propagation_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("propagation_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("parent", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(80), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("updated", TIME, nullable=False),
        sa.ForeignKeyConstraint(["propagation_id"], ["propagations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("propagation_id", "recipe"),
    )
    op.create_index("ix_propagation_items_propagation_id", "propagation_items", ["propagation_id"])


def downgrade() -> None:
    for table in ("propagation_items", "propagations", "proofs", "update_sightings"):
        op.drop_table(table)
