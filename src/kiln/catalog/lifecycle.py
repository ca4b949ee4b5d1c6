"""Catalog tables for an image's life after its bake: channels, revocations, signatures,
the event history, and the version counter per name.

- ``channel_assignments`` is append-only: every promotion, rollback and removal is one
  row; a channel's head is its newest row (``image_id`` None: the channel holds nothing).
- ``revocations``: an image revoked from ``effective`` on (a future time schedules it)
  until ``restored``; its descendants inherit it.
- ``signatures``: a signature kiln verified or made, stored in the OCI layout as
  cosign's ``sha256-<hex>.sig`` tag; the row says which key and where.
- ``events`` is append-only history. It names images by name, version and digest, not by
  row, so it survives gc.
- ``image_names`` keeps each name's highest version ever given, so a version number is
  never handed out twice, even after gc removed the rows.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kiln.catalog.models import Base, Image


class Assignment(Base):
    __tablename__ = "channel_assignments"
    __table_args__ = (Index("ix_channel_assignments_head", "name", "channel", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # the image family
    channel: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | revoke | gc
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    gates: Mapped[str] = mapped_column(Text, default="[]")  # JSON: each gate and its result

    image: Mapped[Image | None] = relationship(foreign_keys=[image_id])
    previous: Mapped[Image | None] = relationship(foreign_keys=[previous_id])

    def gate_results(self) -> list[dict[str, Any]]:
        return list(json.loads(self.gates))


class Revocation(Base):
    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    effective: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    restored: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    image: Mapped[Image] = relationship()


class Signature(Base):
    __tablename__ = "signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    digest: Mapped[str] = mapped_column(String(80))  # the signed manifest
    key_id: Mapped[str] = mapped_column(String(80))  # sha256 of the public key (SPKI DER)
    signature_manifest: Mapped[str] = mapped_column(String(80))  # the .sig manifest
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))

    image: Mapped[Image] = relationship()


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64), index=True)  # the image family
    version: Mapped[int | None] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80), default="")
    machine: Mapped[str] = mapped_column(String(64), default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON

    def details(self) -> dict[str, Any]:
        return dict(json.loads(self.detail))


class ImageName(Base):
    __tablename__ = "image_names"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)
