"""A launch written in plain SQL (kiln.catalog.ledger) is the row the ORM reads: through
sqlite3 on the embedded catalog, and through SQLAlchemy's connection, alike."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln.app.workspace import Workspace
from kiln.catalog import ledger
from kiln.catalog.lifecycle import Event
from kiln.catalog.lookup import sqlite_path
from kiln.catalog.machinelookup import live_launches
from kiln.catalog.machines import live
from kiln.errors import StoreError
from tests.unit.lifecycle_rows import add_image, workspace  # noqa: F401  (a fixture)

AT = datetime(2026, 12, 7, 22, 1, 2, 345678, tzinfo=UTC)


def _launch(image_id: int, name: str = "web-1") -> ledger.Launch:
    return ledger.Launch(
        name=name,
        image_id=image_id,
        image_ref="web:3",
        digest="sha256:" + "a" * 64,
        folder=f"/var/lib/kiln/machines/{name}",
        nspawn_pid=100,
        leader_pid=101,
        config={"site_title": "Hello"},
        secret_keys=("api_token",),
        volumes={"/var/lib/web": "/srv/web"},
        throwaway=False,
    )


@pytest.mark.parametrize("through", ["sqlite3", "sqlalchemy"])
def test_a_launch_reads_back_as_the_orm_writes_it(workspace: Workspace, through: str) -> None:  # noqa: F811
    image = add_image(workspace, "web", 3)
    first, again = _launch(image.id), _launch(image.id)
    for launch, at in ((first, AT), (again, AT.replace(second=9))):
        if through == "sqlite3":
            path = sqlite_path(workspace.home.catalog_url)
            assert path is not None
            with ledger.sqlite_writer(path) as execute:
                assert execute is not None  # the catalog is at HEAD
                ledger.record_launch(execute, launch, at, "alice@host")
        else:
            with workspace.catalog.writer() as execute:
                ledger.record_launch(execute, launch, at, "alice@host")
    with workspace.catalog.reading() as session:
        (row,) = live(session, "web-1")  # the second launch made the first history
        assert (row.image_id, row.image_ref, row.digest) == (image.id, "web:3", first.digest)
        assert row.created.replace(tzinfo=UTC) == AT.replace(second=9)
        assert row.plain_config() == {"site_title": "Hello"}
        assert row.volume_map() == {"/var/lib/web": "/srv/web"}
        assert (row.nspawn_pid, row.leader_pid, row.throwaway) == (100, 101, False)
        events = session.query(Event).filter(Event.kind == "machine_started").all()
        assert [(e.name, e.version, e.machine, e.actor) for e in events] == [
            ("web", 3, "web-1", "alice@host")
        ] * 2
        assert events[0].details() == {"throwaway": False}
    assert live_launches(workspace.lookup)["web-1"].created == "2026-12-07T22:01:09"


def test_a_failed_statement_writes_nothing(workspace: Workspace) -> None:  # noqa: F811
    add_image(workspace, "web", 3)
    path = sqlite_path(workspace.home.catalog_url)
    assert path is not None
    failing = pytest.raises(StoreError, match="could not be written")
    with failing, ledger.sqlite_writer(path) as execute:
        assert execute is not None
        ledger.record_launch(execute, _launch(image_id=999), AT, "alice@host")  # no image
    with workspace.catalog.reading() as session:
        assert session.query(Event).filter(Event.kind == "machine_started").count() == 0


def test_a_catalog_not_at_head_is_left_to_the_orm(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "catalog.db"
    sqlite3.connect(path).close()  # no schema at all
    with ledger.sqlite_writer(path) as execute:
        assert execute is None


@pytest.mark.parametrize("through", ["sqlite3", "sqlalchemy"])
def test_registry_copies_read_back_as_holdings_and_pushed_events(
    workspace: Workspace,  # noqa: F811
    through: str,
) -> None:
    from kiln.catalog import holdings

    image = add_image(workspace, "web", 3)
    place = "docker://127.0.0.1:5000/team/web@sha256:" + "a" * 64
    for _twice in range(2):  # a second push of the same copy is no second holding
        if through == "sqlite3":
            with ledger.writing(workspace.home.catalog_url) as execute:
                ledger.record_copies(execute, [(image.id, place)], AT, "alice@host")
        else:
            with workspace.catalog.writer() as execute:
                ledger.record_copies(execute, [(image.id, place)], AT, "alice@host")
    with workspace.catalog.reading() as session:
        (held,) = holdings.holders(session, [image.id])[image.id]
        assert (held.place, held.kind) == (place, "registry")
        events = session.query(Event).filter(Event.kind == "pushed").all()
        assert [(e.name, e.version, e.details()) for e in events] == [
            ("web", 3, {"to": place}),
            ("web", 3, {"to": place}),
        ]
