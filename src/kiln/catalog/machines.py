"""Catalog tables for machines and image test runs.

A machine row says which image version a machine runs, where its state lives and which
processes are it; the row stays after ``kiln rm`` (``removed`` is set), so the catalog
keeps the history of what ran where. A test run records one ``kiln test`` of an image.
Values are JSON text: plain config values only, never a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from kiln.catalog.models import Base, Image
from kiln.times import iso


class Machine(Base):
    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    image_ref: Mapped[str] = mapped_column(String(80))  # name:version when it was launched
    digest: Mapped[str] = mapped_column(String(80))  # manifest digest it runs
    folder: Mapped[str] = mapped_column(Text)  # $KILN_HOME/machines/<name>
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    removed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    nspawn_pid: Mapped[int] = mapped_column(Integer)
    leader_pid: Mapped[int] = mapped_column(Integer)  # the machine's systemd (its PID 1)
    config: Mapped[str] = mapped_column(Text, default="{}")  # plain values, JSON
    secret_keys: Mapped[str] = mapped_column(Text, default="[]")  # names only, JSON
    volumes: Mapped[str] = mapped_column(Text, default="{}")  # state path -> host folder
    throwaway: Mapped[bool] = mapped_column(Boolean, default=False)  # made by kiln test

    image: Mapped[Image] = relationship()

    def plain_config(self) -> dict[str, str]:
        return dict(json.loads(self.config))

    def volume_map(self) -> dict[str, str]:
        return dict(json.loads(self.volumes))


class TestRun(Base):
    __tablename__ = "test_runs"
    __test__ = False  # not a pytest test class

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    machine: Mapped[str] = mapped_column(String(64))
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ok: Mapped[bool] = mapped_column(Boolean)
    seconds: Mapped[float] = mapped_column(Float)  # the whole run, boot to removal
    healthy_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    results: Mapped[str] = mapped_column(Text, default="[]")  # one object per command
    converge: Mapped[bool | None] = mapped_column(Boolean, default=None)  # None: not checked
    changes: Mapped[str] = mapped_column(Text, default="[]")  # what the second run changed
    error: Mapped[str] = mapped_column(Text, default="")  # why it failed before the tests

    image: Mapped[Image] = relationship()

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "started": iso(self.started),
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "healthy_seconds": (
                round(self.healthy_seconds, 3) if self.healthy_seconds is not None else None
            ),
            "results": json.loads(self.results),
            "converge": self.converge,
            "changes": json.loads(self.changes),
            "error": self.error,
        }


def latest_test_runs(session: Session, image_id: int, limit: int = 10) -> Sequence[TestRun]:
    """An image's latest test runs, newest first."""
    return session.scalars(
        select(TestRun)
        .where(TestRun.image_id == image_id)
        .order_by(TestRun.started.desc(), TestRun.id.desc())
        .limit(limit)
    ).all()


def machines(session: Session, include_removed: bool = False) -> Sequence[Machine]:
    """Every machine row (``include_removed``: those ``kiln rm`` took too), by name and
    creation."""
    query = select(Machine).order_by(Machine.name, Machine.created)
    if not include_removed:
        query = query.where(Machine.removed.is_(None))
    return session.scalars(query).all()


def live(session: Session, name: str) -> Sequence[Machine]:
    """The rows of the machine ``name`` not removed (one, unless a launch lost its folder)."""
    return session.scalars(
        select(Machine).where(Machine.name == name, Machine.removed.is_(None))
    ).all()


def repoint(
    session: Session,
    name: str,
    image_id: int,
    image_ref: str,
    digest: str,
    config: Mapping[str, str],
    secret_keys: Sequence[str],
) -> int:
    """The machine ``name`` now runs another image with these plain values and secret keys
    (kiln update switched its slot): its live rows say so, for kiln where and kiln ps.
    Returns the number of rows changed."""
    rows = live(session, name)
    for row in rows:
        row.image_id, row.image_ref, row.digest = image_id, image_ref, digest
        row.config = json.dumps(dict(config), sort_keys=True)
        row.secret_keys = json.dumps(sorted(secret_keys))
    return len(rows)
