"""Catalog tables (SQLAlchemy 2.0 declarative, typed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
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
