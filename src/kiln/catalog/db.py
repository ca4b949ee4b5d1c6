"""Open the catalog and answer the questions the rest of kiln asks of it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import (
    Column,
    Engine,
    String,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from kiln.catalog.models import Base, Image
from kiln.errors import BadInput, NotFound

REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*)(?::(?P<version>[0-9]+|latest)|@(?P<digest>sha256:[0-9a-f]{64}))?"
)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


SCHEMA = Table("kiln_schema", Base.metadata, Column("fingerprint", String(64)))


def schema_fingerprint() -> str:
    parts = sorted(
        f"{table.name}.{column.name}:{column.type}"
        for table in Base.metadata.sorted_tables
        if table is not SCHEMA
        for column in table.columns
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._ensure_schema()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _ensure_schema(self) -> None:
        """Create or upgrade the tables, unless the catalog already has this schema.

        A fingerprint of every table and column is kept in the catalog, so a catalog that
        is up to date costs one query to open, not an inspection of every table.
        """
        fingerprint = schema_fingerprint()
        try:
            with self.engine.connect() as connection:
                stored = connection.execute(select(SCHEMA.c.fingerprint)).scalar()
        except DBAPIError:
            stored = None
        if stored == fingerprint:
            return
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        with self.engine.begin() as connection:
            connection.execute(SCHEMA.delete())
            connection.execute(SCHEMA.insert().values(fingerprint=fingerprint))

    def _add_missing_columns(self) -> None:
        """Bring an older catalog up to date: columns added since are added with defaults.

        create_all makes missing tables but never alters existing ones; every schema change
        so far only adds columns, which this handles for SQLite and PostgreSQL alike.
        """
        existing = inspect(self.engine)
        with self.engine.begin() as connection:
            for table in Base.metadata.sorted_tables:
                if not existing.has_table(table.name):
                    continue
                have = {column["name"] for column in existing.get_columns(table.name)}
                for column in table.columns:
                    if column.name in have:
                        continue
                    kind = column.type.compile(dialect=self.engine.dialect)
                    default = getattr(column.default, "arg", None)
                    literal = (
                        "''"
                        if isinstance(default, str)
                        else (str(default) if default is not None else "NULL")
                    )
                    connection.execute(
                        text(
                            f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} "
                            f"DEFAULT {literal}"
                        )
                    )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # queries
    @staticmethod
    def by_cache_key(session: Session, key: str) -> Image | None:
        return session.scalars(
            select(Image)
            .where(Image.cache_key == key, Image.status == "ok")
            .order_by(Image.version.desc())
        ).first()

    @staticmethod
    def next_version(session: Session, name: str) -> int:
        current = session.scalar(select(func.max(Image.version)).where(Image.name == name))
        return (current or 0) + 1

    @staticmethod
    def resolve(session: Session, ref: str) -> Image:
        match = REF_RE.fullmatch(ref)
        if not match:
            raise BadInput(
                f"'{ref}' is not an image ref",
                hint="use name, name:version, name:latest or name@sha256:<hex>",
            )
        name, version, digest = match.group("name", "version", "digest")
        query = select(Image).where(Image.name == name, Image.status == "ok")
        if digest:
            query = query.where(Image.digest == digest)
        elif version and version != "latest":
            query = query.where(Image.version == int(version))
        image = session.scalars(query.order_by(Image.version.desc())).first()
        if image is None:
            known = session.scalar(select(func.count()).where(Image.name == name))
            hint = (
                f"'kiln images' lists the versions of {name}"
                if known
                else f'bake a recipe with [image] name = "{name}" first'
            )
            raise NotFound(f"no image {ref} in the catalog", hint=hint)
        return image

    @staticmethod
    def all_images(session: Session) -> Sequence[Image]:
        return session.scalars(select(Image).order_by(Image.name, Image.version)).all()

    @staticmethod
    def ancestors(image: Image) -> list[Image]:
        chain = []
        current = image.parent
        while current is not None:
            chain.append(current)
            current = current.parent
        return chain
