"""The rollouts migration (0005) upgrades a catalog at 0004 keeping its rows, gives the
models' tables, and goes back down without a trace of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect

from kiln.catalog import Catalog, migrate
from kiln.catalog.revisions import HEAD

from .test_migrations import alembic_config, differences, migrate_to, write_rows

BEFORE = "0004_freshness"
TABLES = {"rollouts", "rollout_steps"}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_catalog_at_0004_gets_the_rollout_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    migrate_to(url, BEFORE)
    write_rows(path, 5)
    assert not tables(url) & TABLES
    result = migrate.upgrade(Catalog(url, upgrade=False))
    assert result.before.current == BEFORE and result.applied[0] == "0005_rollouts"
    assert tables(url) >= TABLES
    assert differences(url) == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone() == (2,)
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_the_rollouts_migration_goes_back_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate_to(url, "head")
    write_rows(tmp_path / "catalog.db", 5)
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), BEFORE)
    engine.dispose()
    assert not tables(url) & TABLES
    with sqlite3.connect(tmp_path / "catalog.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(BEFORE,)]
        assert db.execute("SELECT count(*) FROM images").fetchone() == (2,)
    migrate_to(url, "head")
    assert differences(url) == []
