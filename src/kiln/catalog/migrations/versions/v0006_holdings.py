"""Stores that know where bytes are: a ``stores`` row per store (KILN_HOME) that writes to
the catalog, and a ``holdings`` row per place (a store, a registry) holding an image's
bytes. Rows baked before this revision hold nothing yet ("unclaimed"): the first store
with an unclaimed row's manifest in its layout claims it (kiln gc, kiln fsck).

Revision ID: 0006_holdings
Revises: 0005_rollouts
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_holdings"
down_revision = "0005_rollouts"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stores",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("home", sa.Text(), nullable=False),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "holdings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("place", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("recorded", TIME, nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "place"),
    )
    op.create_index("ix_holdings_image_id", "holdings", ["image_id"])
    op.create_index("ix_holdings_place", "holdings", ["place"])


def downgrade() -> None:
    for table in ("holdings", "stores"):
        op.drop_table(table)
