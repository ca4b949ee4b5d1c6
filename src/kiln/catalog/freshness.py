"""Catalog tables for images that must not age: update sightings, rebuild proofs and
propagation runs.

- ``update_sightings``: each newer package version kiln has seen in a suite, with when it
  first saw it (Packages indexes carry no dates, so this is what ``max_security_age``
  measures from). One row per package, architecture, version and suite, never changed.
- ``proofs``: one ``kiln rebuild --prove`` of an image: whether a fresh bake from its lock
  gave the same digest, when, and what differed (JSON ``detail``).
- ``propagations`` and ``propagation_items``: one ``kiln propagate`` of a changed image to
  the images built on it, and each image of its plan with the state it reached, so a run
  cut short (a crash, SIGKILL) is continued by the next one instead of started over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from kiln.catalog.models import Base, Image


class Sighting(Base):
    __tablename__ = "update_sightings"
    __table_args__ = (UniqueConstraint("package", "architecture", "version", "suite"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package: Mapped[str] = mapped_column(String(128))
    architecture: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(128))  # the newer version available
    suite: Mapped[str] = mapped_column(String(128))  # e.g. bookworm-security
    security: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Proof(Base):
    __tablename__ = "proofs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    digest: Mapped[str] = mapped_column(String(80))  # the stored image's manifest digest
    rebuilt: Mapped[str] = mapped_column(String(80), default="")  # what the rebuild gave
    ok: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float] = mapped_column(Float)
    package_cache: Mapped[bool] = mapped_column(Boolean, default=True)  # False: mirror only
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: diff, inputs, packages

    image: Mapped[Image] = relationship()

    def details(self) -> dict[str, Any]:
        return dict(json.loads(self.detail))


class Propagation(Base):
    __tablename__ = "propagations"
    __table_args__ = (Index("ix_propagations_origin", "origin_digest", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    origin: Mapped[str] = mapped_column(String(80))  # the changed image, name:version
    origin_digest: Mapped[str] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(64), default="")  # --to; "" for none
    state: Mapped[str] = mapped_column(String(16))  # running | done | failed
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    actor: Mapped[str] = mapped_column(String(128))
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON: parallel, max_failures
    items: Mapped[list[PropagationItem]] = relationship(
        back_populates="propagation",
        cascade="all, delete-orphan",
        order_by="PropagationItem.position",
    )


class PropagationItem(Base):
    __tablename__ = "propagation_items"
    __table_args__ = (UniqueConstraint("propagation_id", "recipe"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    propagation_id: Mapped[int] = mapped_column(ForeignKey("propagations.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # the plan's order
    wave: Mapped[int] = mapped_column(Integer)  # 1: children of the origin, 2: theirs ...
    name: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[str] = mapped_column(Text)  # the recipe's path
    parent: Mapped[str] = mapped_column(String(64))  # the name it is rebaked on
    reason: Mapped[str] = mapped_column(Text)  # which ancestor changed
    # planned | baked | tested | promoted | failed | skipped | pinned
    state: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(80), default="")  # the image it made
    digest: Mapped[str] = mapped_column(String(80), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: error, gates
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    propagation: Mapped[Propagation] = relationship(back_populates="items")

    def details(self) -> dict[str, Any]:
        return dict(json.loads(self.detail))


def record_sightings(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the sightings ``rows`` (each a dict of the columns) not recorded yet, in the
    caller's write transaction; a rival inserting the same row at once is no error (its
    time stands)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    for start in range(0, len(rows), 200):
        statement = insert(Sighting).values(list(rows[start : start + 200]))
        session.execute(
            statement.on_conflict_do_nothing(
                index_elements=["package", "architecture", "version", "suite"]
            )
        )
