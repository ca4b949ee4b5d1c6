"""Catalog tables (SQLAlchemy 2.0 declarative, typed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80), index=True)  # manifest digest
    config_digest: Mapped[str] = mapped_column(String(80))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    cache_key: Mapped[str] = mapped_column(String(64), index=True)
    recipe_path: Mapped[str] = mapped_column(Text)
    recipe_digest: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))  # parent | bootstrap | import | scratch
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="ok")
    size: Mapped[int] = mapped_column(BigInteger)  # bytes of this image's own layer: 64-bit
    seconds: Mapped[float] = mapped_column(Float)  # how long the bake took

    parent: Mapped[Image | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[Image]] = relationship(back_populates="parent")
    packages: Mapped[list[Package]] = relationship(
        back_populates="image", cascade="all, delete-orphan", order_by="Package.name"
    )
    artefacts: Mapped[list[Artefact]] = relationship(
        back_populates="image", cascade="all, delete-orphan", order_by="Artefact.kind"
    )
    holdings: Mapped[list[HoldingRow]] = relationship(
        back_populates="image", cascade="all, delete-orphan", order_by="HoldingRow.place"
    )

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class Package(Base):
    __tablename__ = "packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    architecture: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), default="")  # of the .deb; "" if unknown

    image: Mapped[Image] = relationship(back_populates="packages")


class Artefact(Base):
    """A document about an image (provenance, sbom), stored as an OCI referrer."""

    __tablename__ = "artefacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    media_type: Mapped[str] = mapped_column(String(128))
    manifest_digest: Mapped[str] = mapped_column(String(80))  # the referrer manifest
    digest: Mapped[str] = mapped_column(String(80))  # the document itself

    image: Mapped[Image] = relationship(back_populates="artefacts")


class StoreRow(Base):
    """A store (a KILN_HOME's OCI layout) that has written to this catalog: its id
    (kiln.home.Home.store_id), the host and path it was last seen at."""

    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    home: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HoldingRow(Base):
    """Where an image's bytes are: a store (``place`` is its id) or a registry (``place`` is
    the location, ``docker://host:port/team/web@sha256:...``). Queries: kiln.catalog.holdings."""

    __tablename__ = "holdings"
    __table_args__ = (UniqueConstraint("image_id", "place"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    place: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # store | registry
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    image: Mapped[Image] = relationship(back_populates="holdings")


class Rollout(Base):
    """One ``kiln rollout`` of a group: where it moves the members (a digest resolved once,
    and the plain config they start with), the state it reached and why, and the lowest
    number of healthy members seen while it ran. ``stable_at`` is set when the target has
    baked: it is then the group's stable digest."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(80))  # manifest digest
    target_ref: Mapped[str] = mapped_column(String(128))  # name:version the ref named
    named: Mapped[str] = mapped_column(String(128))  # the ref as given (web:prod)
    config: Mapped[str] = mapped_column(Text)  # JSON: plain values the members start with
    settings: Mapped[str] = mapped_column(Text)  # JSON: the group's update settings then
    count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    lowest_healthy: Mapped[int | None] = mapped_column(Integer, default=None)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    actor: Mapped[str] = mapped_column(String(128))

    steps: Mapped[list[RolloutStep]] = relationship(
        back_populates="rollout", cascade="all, delete-orphan", order_by="RolloutStep.position"
    )


class RolloutStep(Base):
    """One step of a rollout's plan (start, remove, wait, promote, bake), written before it
    acts (``intent``) and after (``done``), so a rollout cut short continues where it
    stopped."""

    __tablename__ = "rollout_steps"
    __table_args__ = (UniqueConstraint("rollout_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))  # forward | rollback
    action: Mapped[str] = mapped_column(String(16))
    member: Mapped[str] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80))
    config: Mapped[str] = mapped_column(Text)  # JSON
    replaces: Mapped[str] = mapped_column(String(64))
    from_digest: Mapped[str] = mapped_column(String(80))
    from_config: Mapped[str] = mapped_column(Text)  # JSON
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    rollout: Mapped[Rollout] = relationship(back_populates="steps")
