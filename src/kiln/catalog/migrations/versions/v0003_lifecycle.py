"""An image's life after its bake: channel assignments, revocations, signatures, the
event history, and each name's highest version ever given (so gc never lets a number
come back). Every name already in the catalog starts at its highest version.

Revision ID: 0003_lifecycle
Revises: 0002_sizes_64bit
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_lifecycle"
down_revision = "0002_sizes_64bit"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("machine", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_name", "events", ["name"])
    op.create_table(
        "image_names",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        "INSERT INTO image_names (name, last_version) "
        "SELECT name, max(version) FROM images GROUP BY name"
    )
    op.create_table(
        "channel_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("gates", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.ForeignKeyConstraint(["previous_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_channel_assignments_head", "channel_assignments", ["name", "channel", "id"])
    op.create_index("ix_channel_assignments_image_id", "channel_assignments", ["image_id"])
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("effective", TIME, nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("restored", TIME, nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_revocations_image_id", "revocations", ["image_id"])
    op.create_table(
        "signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("key_id", sa.String(80), nullable=False),
        sa.Column("signature_manifest", sa.String(80), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signatures_image_id", "signatures", ["image_id"])


def downgrade() -> None:
    for table in ("signatures", "revocations", "channel_assignments", "image_names", "events"):
        op.drop_table(table)
