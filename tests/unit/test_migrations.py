"""The catalog's Alembic migrations agree with the models, and kiln upgrades old catalogs
when it opens them: once, under the write lock, keeping every row."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Connection

from kiln.catalog import Catalog, migrate
from kiln.catalog.models import Base, Image
from kiln.catalog.revisions import FIRST, HEAD, REVISIONS
from kiln.errors import StoreError

TWO_GIB_AND_MORE = 3 * 2**30 + 7


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrate.SCRIPTS))
    config.attributes["connection"] = connection
    return config


def migrate_to(url: str, revision: str) -> None:
    """Run the migration scripts themselves (not kiln's create_all shortcut)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
    engine.dispose()


def differences(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(found)


def test_revisions_in_code_match_the_scripts() -> None:
    scripts = ScriptDirectory(str(migrate.SCRIPTS))
    chain = [script.revision for script in scripts.walk_revisions("base", "heads")]
    assert tuple(reversed(chain)) == REVISIONS
    assert scripts.get_heads() == [HEAD]


def test_migrations_from_base_give_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate_to(url, "head")
    assert differences(url) == []
    assert "kiln_schema" not in inspect(create_engine(url)).get_table_names()


def test_a_new_catalog_is_made_at_head_without_migrating(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    assert catalog.revision() == HEAD
    assert migrate.status(catalog).state == "current"
    catalog.close()
    assert differences(url) == []


def write_rows(path: Path, size: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO images (id, name, version, digest, config_digest, parent_id, "
            "cache_key, recipe_path, recipe_digest, origin, created, status, size, seconds) "
            "VALUES (1, 'tiny', 1, 'sha256:aa', 'sha256:bb', NULL, 'k', '/r.toml', 'd', "
            "'scratch', '2026-01-01 00:00:00', 'ok', ?, 1.5)",
            (size,),
        )
        db.execute(
            "INSERT INTO images (id, name, version, digest, config_digest, parent_id, "
            "cache_key, recipe_path, recipe_digest, origin, created, status, size, seconds) "
            "VALUES (2, 'child', 1, 'sha256:cc', 'sha256:dd', 1, 'k2', '/c.toml', 'd', "
            "'parent', '2026-01-01 00:00:01', 'ok', 10, 0.5)"
        )
        db.execute(
            "INSERT INTO packages (image_id, name, version, architecture, sha256) "
            "VALUES (1, 'busybox-static', '1:1.36', 'amd64', '')"
        )
        db.execute(
            "INSERT INTO artefacts (image_id, kind, media_type, manifest_digest, digest) "
            "VALUES (2, 'sbom', 'application/vnd.cyclonedx+json', 'sha256:ee', 'sha256:ff')"
        )


def old_catalog(tmp_path: Path) -> Path:
    """A catalog as kiln 0.1.0 left it: the first revision's tables, its fingerprint
    table filled in, and no alembic_version."""
    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    migrate_to(url, FIRST)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE alembic_version")
        db.execute("INSERT INTO kiln_schema VALUES ('0' || hex(randomblob(31)))")
    write_rows(path, TWO_GIB_AND_MORE)
    return path


def test_an_unversioned_catalog_is_stamped_and_upgraded_keeping_its_rows(
    tmp_path: Path,
) -> None:
    path = old_catalog(tmp_path)
    url = f"sqlite:///{path}"
    looked = Catalog(url, upgrade=False)
    before = migrate.status(looked)
    assert (before.state, before.current, before.pending) == (
        "unversioned",
        None,
        list(REVISIONS[1:]),
    )
    looked.close()

    catalog = Catalog(url)
    assert catalog.revision() == HEAD
    with catalog.reading() as session:
        child = session.scalars(select(Image).where(Image.name == "child")).one()
        assert child.parent is not None and child.parent.ref == "tiny:1"
        assert child.parent.size == TWO_GIB_AND_MORE
        assert [p.name for p in child.parent.packages] == ["busybox-static"]
        assert [a.kind for a in child.artefacts] == ["sbom"]
    catalog.close()
    assert differences(url) == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_catalog_at_the_first_revision_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    migrate_to(url, FIRST)
    write_rows(path, 5)
    # the comparison sees what the first revision lacks: it can fail
    found = differences(url)
    removed = [d[1].name for d in found if isinstance(d, tuple) and d[0] == "remove_table"]
    added = {d[1].name for d in found if isinstance(d, tuple) and d[0] == "add_table"}
    types = [d[0][:4] for d in found if isinstance(d, list)]
    assert removed == ["kiln_schema"]
    assert added == {
        *("events", "image_names", "channel_assignments", "revocations", "signatures"),
        *("update_sightings", "proofs", "propagations", "propagation_items"),
        *("rollouts", "rollout_steps"),
        *("stores", "holdings"),
    }
    assert ("modify_type", None, "images", "size") in types
    result = migrate.upgrade(Catalog(url, upgrade=False))
    assert result.before.state == "behind" and result.applied == list(REVISIONS[1:])
    again = migrate.upgrade(Catalog(url, upgrade=False))
    assert again.before.state == "current" and again.applied == []
    assert differences(url) == []


def test_an_upgrade_that_fails_changes_nothing(tmp_path: Path) -> None:
    path = old_catalog(tmp_path)
    with sqlite3.connect(path) as db:  # in the way of the batch copy of images
        db.execute("CREATE TABLE _alembic_tmp_images (id INTEGER)")
        schema = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    with pytest.raises(StoreError, match="could not be upgraded") as raised:
        Catalog(f"sqlite:///{path}")
    assert "nothing was changed" in raised.value.message
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
        assert db.execute("SELECT count(*) FROM images").fetchone() == (2,)


def test_a_catalog_from_a_newer_kiln_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    Catalog(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(StoreError, match="9999_future") as raised:
        Catalog(f"sqlite:///{path}")
    assert raised.value.hint and "newer kiln" in raised.value.hint


OPEN = """
import sys
from kiln.catalog import Catalog
catalog = Catalog(sys.argv[1])
print(catalog.revision(), "alembic" in sys.modules)
"""


def test_rivals_opening_an_old_catalog_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = old_catalog(tmp_path)
    url = f"sqlite:///{path}"
    rivals = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [rival.communicate(timeout=120) for rival in rivals]
    assert [rival.returncode for rival in rivals] == [0] * 4, outputs
    assert {out.split()[0] for out, _err in outputs} == {HEAD.encode()}
    # one migrated (importing Alembic); the others waited for its lock and found it done
    assert sum(out.split()[1] == b"True" for out, _err in outputs) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone() == (2,)
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_opening_an_up_to_date_catalog_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).close()
    done = subprocess.run(
        [sys.executable, "-c", OPEN, url], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [HEAD, "False"]
