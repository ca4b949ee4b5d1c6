"""Stores that know where bytes are: the store id, holdings in the catalog, and gc, fsck
and the listings of two stores sharing one (SQLite) catalog."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, select

from kiln.app import gc, images, stores, trace
from kiln.app.workspace import Workspace
from kiln.catalog import baking, holdings
from kiln.catalog.holdings import Holder
from kiln.catalog.lifecycle import Event
from kiln.catalog.lookup import ImageRow
from kiln.catalog.models import Image, StoreRow
from kiln.errors import StoreError
from kiln.home import Home
from kiln.store.layout import Layout

from .lifecycle_rows import add_image, manifest
from .test_migrations import alembic_config, differences, migrate_to, write_rows

REGISTRY_COPY = "docker://127.0.0.1:5000/team/web@sha256:" + "ab" * 32


def new_home(path: Path) -> Home:
    home = Home(path)
    home.ensure()
    Layout(home.oci).init()
    return home


@dataclass
class Two:
    """Two stores (KILN_HOMEs) on one catalog."""

    a: Workspace
    b: Workspace

    def held(self, image: ImageRow) -> list[str]:
        """Who holds ``image``: 'a', 'b' or a registry location, in the catalog's order."""
        names = {self.a.home.store_id: "a", self.b.home.store_id: "b"}
        with self.a.catalog.reading() as session:
            found = holdings.holders(session, [image.id]).get(image.id, [])
        return [names.get(h.place, h.place) for h in found]

    def exists(self, image: ImageRow) -> bool:
        with self.a.catalog.reading() as session:
            return session.get(Image, image.id) is not None


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Two]:
    monkeypatch.setenv("KILN_CATALOG_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    monkeypatch.delenv("KILN_POLICY", raising=False)
    monkeypatch.chdir(tmp_path)
    pair = Two(Workspace(new_home(tmp_path / "a")), Workspace(new_home(tmp_path / "b")))
    yield pair
    pair.a.close()
    pair.b.close()


def hold(workspace: Workspace, image: ImageRow, place: str | None = None, **kind: str) -> None:
    with workspace.catalog.session() as session:
        holder = Holder.of(workspace.home)
        holder.register(session)
        holdings.hold(session, image.id, place or holder.store_id, **kind)


def copy_into(workspace: Workspace, image: ImageRow) -> None:
    """The bytes of ``image`` (made by lifecycle_rows.add_image) in another store, tagged."""
    found, _config = manifest(workspace, image.ref.encode())
    assert found.digest == image.digest
    workspace.layout.tag(image.ref, found)


def pending(workspace: Workspace, name: str) -> tuple[int, int]:
    """A bake's pending row, taken for the workspace's store and never confirmed."""
    digest = "sha256:" + hashlib.sha256(f"{name} pending".encode()).hexdigest()
    new = baking.NewVersion(
        name=name,
        digest=digest,
        config_digest=digest,
        parent_id=None,
        cache_key=hashlib.sha256(digest.encode()).hexdigest(),
        recipe_path=f"/recipes/{name}.toml",
        recipe_digest="0" * 64,
        origin="scratch",
        created=datetime.now(UTC),
        size=1,
        seconds=0.0,
        packages=[],
    )
    return baking.take_version(workspace.catalog, new, Holder.of(workspace.home))


# the store id


def test_the_store_id_is_made_once_and_is_not_the_homes_path_id(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    made = home.store_id
    assert len(made) == 32 and int(made, 16) >= 0 and made == made.lower()
    assert Home(tmp_path / "home").store_id == made, "read again, never made anew"
    assert (tmp_path / "home" / "store.id").read_text() == made + "\n"
    assert (tmp_path / "home" / "store.id").stat().st_mode & 0o777 == 0o644
    assert Home(tmp_path / "other").store_id != made
    assert home.id != made[:8] and len(home.id) == 8
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["store.id"]


def test_processes_starting_at_once_agree_on_one_store_id(tmp_path: Path) -> None:
    root = tmp_path / "home"
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from kiln.home import Home\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "print(Home(Path(sys.argv[1])).store_id)\n"
    )
    started = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    time.sleep(0.5)  # every one of them waiting for the same moment
    go.touch()
    said = {process.communicate(timeout=60)[0].strip() for process in started}
    assert all(process.returncode == 0 for process in started)
    assert len(said) == 1 and said == {(root / "store.id").read_text().strip()}
    assert sorted(p.name for p in root.iterdir()) == ["store.id"], "no temp file left"


@pytest.mark.parametrize(
    "content", [b"", b"not an id\n", b"ABCDEF0123456789ABCDEF0123456789\n", b"0" * 31 + b"\n"]
)
def test_a_damaged_store_id_is_refused_and_left_as_it_is(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "store.id"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="does not hold a store id") as raised:
        _ = Home(tmp_path).store_id
    assert raised.value.hint and "backup" in raised.value.hint
    assert path.read_bytes() == content


# holdings


def test_hold_release_and_holders_are_idempotent(two: Two) -> None:
    web = add_image(two.a, "web", 1)
    other = add_image(two.a, "web", 2)
    here = two.a.home.store_id
    for _ in range(2):
        hold(two.a, web)
        hold(two.a, web, REGISTRY_COPY, kind="registry")
        hold(two.b, web)
    assert two.held(web) == ["a", "b", REGISTRY_COPY]
    with two.a.catalog.reading() as session:
        found = holdings.holders(session, [web.id, other.id, web.id])
        assert list(found) == [web.id], "an image no place holds is left out"
        assert holdings.held_by(session, here) == {web.id}
        assert holdings.held_by(session, REGISTRY_COPY) == {web.id}
    mine = found[web.id][0]
    host = Holder.of(two.a.home).host
    assert (mine.kind, mine.host, mine.home) == ("store", host, str(two.a.home.root))
    assert mine.to_json(here)["here"] and not found[web.id][1].to_json(here)["here"]
    assert found[web.id][2].to_json(here) == {
        "place": REGISTRY_COPY,
        "kind": "registry",
        "host": "",
        "home": "",
        "here": False,
    }
    for _ in range(2):
        with two.a.catalog.session() as session:
            holdings.release(session, web.id, here)
    assert two.held(web) == ["b", REGISTRY_COPY]
    assert holdings.holders(two.a.lookup, [web.id]) == holdings.all_holders(two.a.catalog.lookup())
    with two.a.catalog.session() as session, pytest.raises(ValueError, match="kind"):
        holdings.hold(session, web.id, "somewhere", kind="tape")


def test_a_store_is_registered_once_and_seen_again(two: Two) -> None:
    store_id = two.a.home.store_id
    with two.a.catalog.session() as session:
        holdings.register_store(session, store_id, "host-a", "/var/lib/kiln")
    with two.a.catalog.session() as session:
        holdings.register_store(session, store_id, "host-a2", "/srv/kiln")
    with two.a.catalog.reading() as session:
        [row] = session.scalars(select(StoreRow)).all()
        assert (row.id, row.host, row.home) == (store_id, "host-a2", "/srv/kiln")
        assert row.last_seen >= row.first_seen


def test_a_bakes_pending_row_is_held_from_the_moment_it_is_taken(two: Two) -> None:
    image_id, version = pending(two.a, "web")
    assert version == 1
    with two.a.catalog.reading() as session:
        assert holdings.held_by(session, two.a.home.store_id) == {image_id}
    baking.take_back(two.a.catalog, image_id)
    with two.a.catalog.reading() as session:
        assert holdings.all_holders(session) == {}
        assert session.get(Image, image_id) is None


# two stores, one catalog


def test_gc_of_each_store_keeps_the_others_rows_and_pending_rows(two: Two) -> None:
    web = [add_image(two.a, "web", n, stored=True) for n in (1, 2, 3)]
    app = [add_image(two.b, "app", n, stored=True) for n in (1, 2)]
    both = [add_image(two.a, "both", n, stored=True) for n in (1, 2)]
    for image in both:
        copy_into(two.b, image)  # B claims them: its index tags them
    pushed = add_image(two.a, "pushed", 1, stored=True)
    add_image(two.a, "pushed", 2, stored=True)
    hold(two.a, pushed, REGISTRY_COPY, kind="registry")
    a_pending, _ = pending(two.a, "web")
    b_pending, _ = pending(two.b, "app")
    for image in [*web, *both, pushed]:  # A's first gc or fsck claims these
        hold(two.a, image)
    for image in app:
        hold(two.b, image)

    dry = gc.collect_garbage(two.b, dry_run=True, keep_last=1)
    assert [v.ref for v in dry.decision.removed] == ["app:1", "both:1"]
    assert [i.path for i in dry.report.items if i.kind == "image"] == ["app:3"]
    kept = {row["ref"]: row["reasons"] for row in dry.to_json()["retention"]["kept"]}
    assert (
        kept["web:1"]
        == kept["pushed:1"]
        == [
            f"held by store {two.a.home.store_id[:8]} on {Holder.of(two.a.home).host} "
            f"({two.a.home.root})"
        ]
    )
    assert two.held(both[0]) == ["a"], "a dry run writes no claim"

    done = gc.collect_garbage(two.b, keep_last=1)
    assert [v.ref for v in done.decision.removed] == ["app:1", "both:1"]
    assert not two.exists(app[0]) and two.exists(app[1])
    assert two.exists(both[0]) and two.held(both[0]) == ["a"], "A still holds both:1"
    assert two.held(both[1]) == ["a", "b"]
    assert any("both:1: this store's copy goes; its row stays" in n for n in done.notes)
    assert all(two.exists(image) for image in [*web, pushed])
    assert sorted(two.b.layout.refs()) == ["app:2", "both:2"]
    assert sorted(two.a.layout.refs()) == [
        "both:1", "both:2", "pushed:1", "pushed:2", "web:1", "web:2", "web:3"
    ]  # fmt: skip
    with two.a.catalog.reading() as session:
        assert session.get(Image, a_pending) is not None, "A's unfinished bake stays"
        assert session.get(Image, b_pending) is None
        gone = session.scalars(select(Event.name).where(Event.kind == "removed")).all()
        assert gone == ["app"], "both:1 is not removed while A holds it"
    assert any("1 unfinished bake of other stores" in n for n in done.notes)

    done = gc.collect_garbage(two.a, keep_last=1)
    assert [v.ref for v in done.decision.removed] == ["both:1", "pushed:1", "web:1", "web:2"]
    assert not any(two.exists(image) for image in (web[0], web[1], both[0], pushed))
    assert two.exists(app[1]) and two.exists(web[2])
    assert any(REGISTRY_COPY in note and "pushed:1" in note for note in done.notes)
    with two.a.catalog.reading() as session:
        assert session.get(Image, a_pending) is None
        gone = session.scalars(select(Event.name).where(Event.kind == "removed")).all()
        assert sorted(gone) == ["app", "both", "pushed", "web", "web"]
    assert images.check(two.a).ok and images.check(two.b).ok


def test_a_row_another_store_holds_is_never_removed_even_by_a_stale_decision(
    two: Two,
) -> None:
    """Another store's holding keeps the row by its foreign key: a gc that decided on rows
    read before that store came to hold it (PostgreSQL lets the two overlap) removes
    nothing, and says to run again."""
    from kiln.catalog import retention as rows
    from kiln.catalog.db import Conflict

    old = add_image(two.a, "web", 1, stored=True)
    add_image(two.a, "web", 2, stored=True)
    hold(two.a, old)
    hold(two.b, old)  # after A's gc read who holds what
    with (
        pytest.raises(Conflict, match="someone else got there first"),
        two.a.catalog.session() as session,
    ):
        rows.remove_versions(session, [old.id], [], [], [], two.a.home.store_id)
    assert two.exists(old) and two.held(old) == ["a", "b"]


def test_fsck_checks_this_stores_rows_and_lists_the_others(two: Two) -> None:
    web = add_image(two.a, "web", 1, stored=True)
    hold(two.a, web)
    unclaimed = add_image(two.b, "old", 1, stored=True)  # baked before holdings
    nowhere = add_image(two.a, "lost", 1)  # no bytes in any store
    report = images.check(two.b)
    assert report.ok, report.faults
    assert two.held(unclaimed) == ["b"], "B has its manifest: B claims it"
    assert report.elsewhere == {
        "web:1": f"store {two.a.home.store_id[:8]} on {Holder.of(two.a.home).host} "
        f"({two.a.home.root})",
        "lost:1": "no store",
    }
    assert report.to_json()["elsewhere"][0] == {"ref": "lost:1", "held": "no store"}
    two.a.layout.untag("web:1")
    report = images.check(two.a)
    assert report.faults == ["catalog image web:1 has no entry in index.json"]
    assert set(report.elsewhere) == {"old:1", "lost:1"}
    assert two.held(nowhere) == []


def test_images_and_where_say_where_the_bytes_are(two: Two) -> None:
    web = add_image(two.a, "web", 1, stored=True)
    hold(two.a, web)
    hold(two.a, web, REGISTRY_COPY, kind="registry")
    app = add_image(two.b, "app", 1, stored=True)
    hold(two.b, app)
    listed = {row["ref"]: row["stores"] for row in images.list_images(two.b)}
    assert [s["here"] for s in listed["web:1"]] == [False, False]
    assert [s["here"] for s in listed["app:1"]] == [True]
    assert stores.shown(listed["web:1"]) == f"{Holder.of(two.a.home).host}+registry"
    assert stores.shown(listed["app:1"]) == "here"
    listed = {row["ref"]: row["stores"] for row in images.list_images(two.a)}
    assert stores.shown(listed["web:1"]) == "here+registry"
    assert listed["web:1"][0]["home"] == str(two.a.home.root)
    [version] = trace.where(two.b, "web:1")["versions"]
    assert version["stores"] == [
        {
            "place": two.a.home.store_id,
            "kind": "store",
            "host": Holder.of(two.a.home).host,
            "home": str(two.a.home.root),
            "here": False,
        },
        {"place": REGISTRY_COPY, "kind": "registry", "host": "", "home": "", "here": False},
    ]
    matrix = trace.where(two.b)
    assert {row["name"]: row["latest"]["stores"][0]["here"] for row in matrix["images"]} == {
        "app": True,
        "web": False,
    }


def test_a_store_that_only_reads_makes_no_store_id(two: Two, tmp_path: Path) -> None:
    web = add_image(two.a, "web", 1, stored=True)
    hold(two.a, web)
    reader = Workspace(new_home(tmp_path / "c"))
    try:
        [row] = images.list_images(reader)
        assert [s["here"] for s in row["stores"]] == [False]
        assert trace.where(reader, "web:1")["versions"][0]["stores"] == row["stores"]
        assert not reader.home.store_id_file.exists()
    finally:
        reader.close()


# the migration


def test_the_holdings_migration_keeps_rows_and_goes_back_down(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    url = f"sqlite:///{path}"
    migrate_to(url, "0005_rollouts")
    write_rows(path, 5)
    migrate_to(url, "head")
    assert differences(url) == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM images").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM holdings").fetchone() == (0,), "unclaimed"
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0005_rollouts")
    engine.dispose()
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert not names & {"stores", "holdings"} and os.path.getsize(path) > 0
