"""Retention: the decision (every rule and its reason, ancestors, what a bake in progress
needs), then gc carrying it out on a real SQLite catalog and OCI layout: rows, events,
tags, bytes and cached packages, and the version counter that never goes back."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kiln.app import gc, images
from kiln.app.workspace import Workspace
from kiln.catalog import Catalog, Image, Machine, Package, TestRun, events
from kiln.catalog.lifecycle import Assignment, Event, ImageName, Revocation, Signature
from kiln.catalog.models import Artefact
from kiln.errors import BadInput
from kiln.home import Home
from kiln.lifecycle.retention import (
    NO_RULE,
    Assigned,
    Rules,
    Use,
    Version,
    ago,
    decide,
)
from kiln.machines.folder import Folder, Proc, State, save
from kiln.recipe import lockfile
from kiln.recipe.lockfile import Deb, Lock
from kiln.store import artefacts
from kiln.store.layout import MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST, Layout

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def family(name: str, count: int, first_id: int, age: float = 100.0) -> list[Version]:
    """``count`` versions of ``name``, one a day, the newest ``age - count + 1`` days old."""
    return [
        Version(first_id + n, name, n + 1, f"sha256:{name}{n + 1}", None, days(age - n))
        for n in range(count)
    ]


def kept(decision_versions: list[Version], **kwargs: object) -> dict[str, list[str]]:
    decision = decide(decision_versions, [], [], Rules(**kwargs), NOW)  # type: ignore[arg-type]
    return {decision.versions[i].ref: why for i, why in decision.kept.items()}


# the decision


def test_without_a_rule_nothing_goes_and_that_is_the_reason() -> None:
    versions = family("web", 3, 1)
    decision = decide(versions, [], [], Rules(), NOW)
    assert decision.removed == []
    assert all(NO_RULE in why for why in decision.kept.values())
    assert len(decision.kept) == 3 and not decision.to_json()["active"]


def test_keep_last_counts_per_name() -> None:
    versions = family("web", 4, 1) + family("db", 2, 10)
    decision = decide(versions, [], [], Rules(keep_last=2), NOW)
    assert {decision.versions[i].ref: why for i, why in decision.kept.items()} == {
        "db:1": ["last 2 of db"],
        "db:2": ["last 2 of db"],
        "web:3": ["last 2 of web"],
        "web:4": ["last 2 of web"],
    }
    assert [v.ref for v in decision.removed] == ["web:1", "web:2"]


def test_keep_last_zero_keeps_nothing_by_count() -> None:
    decision = decide(family("web", 2, 1), [], [], Rules(keep_last=0), NOW)
    assert decision.kept == {} and [v.ref for v in decision.removed] == ["web:1", "web:2"]


def test_keep_younger_than() -> None:
    versions = family("web", 5, 1, age=6)  # 6, 5, 4, 3, 2 days old
    assert kept(versions, keep_younger_than="4d") == {
        "web:4": ["younger than 4d"],
        "web:5": ["younger than 4d"],
    }


def test_a_channel_head_always_stays_and_history_within_the_window() -> None:
    versions = family("web", 6, 1)
    rows = [
        Assigned(1, "web", "prod", 1, days(30)),  # web:1 until 20 days ago: outside 14d
        Assigned(2, "web", "prod", 2, days(20)),  # web:2 until 3 days ago: inside
        Assigned(3, "web", "prod", 3, days(3)),  # web:3 is the head
        Assigned(4, "web", "staging", 4, days(10)),  # web:4 until the channel was emptied
        Assigned(5, "web", "staging", None, days(2)),  # the head holds nothing
    ]
    decision = decide(versions, rows, [], Rules(keep_last=1, keep_channel_history="14d"), NOW)
    why = {decision.versions[i].ref: reasons for i, reasons in decision.kept.items()}
    assert why == {
        "web:2": ["rollback target of web:prod", "in web:prod until 3d ago"],
        "web:3": ["head of web:prod"],
        "web:4": ["rollback target of web:staging", "in web:staging until 2d ago"],
        "web:6": ["last 1 of web"],
    }
    # without the history rule the head and what a rollback goes back to stay, whatever
    # else the rules say
    decision = decide(versions, rows, [], Rules(keep_last=0), NOW)
    assert {decision.versions[i].ref for i in decision.kept} == {"web:2", "web:3", "web:4"}
    assert decision.held_by(1) == ["web:prod"] and decision.held_by(5) == []
    assert decision.to_json()["removed"][0] == {
        "ref": "web:1",
        "digest": "sha256:web1",
        "held_by": ["web:prod"],
    }


def test_the_rollback_target_stays_as_kiln_rollback_finds_it() -> None:
    versions = family("web", 4, 1)
    promoted = [Assigned(n, "web", "prod", n, days(10 - n)) for n in (1, 2, 3)]
    back = Assigned(4, "web", "prod", 2, days(5), action="rollback")  # undoes web:3
    decision = decide(versions, [*promoted, back], [], Rules(keep_last=0), NOW)
    assert {decision.versions[i].ref: why for i, why in decision.kept.items()} == {
        "web:1": ["rollback target of web:prod"],  # not web:3, which the rollback undid
        "web:2": ["head of web:prod"],
    }
    decision = decide(versions, promoted, [], Rules(keep_last=0), NOW, revoked={2})
    assert {decision.versions[i].ref for i in decision.kept} == {"web:1", "web:3"}


def test_the_newest_row_is_the_head_even_when_times_disagree() -> None:
    versions = family("web", 2, 1)
    rows = [Assigned(1, "web", "prod", 1, days(1)), Assigned(2, "web", "prod", 2, days(5))]
    decision = decide(versions, rows, [], Rules(keep_last=0), NOW)
    assert decision.kept == {1: ["rollback target of web:prod"], 2: ["head of web:prod"]}


def test_machines_keep_their_images_running_or_stopped() -> None:
    versions = family("web", 3, 1)
    uses = [Use("web-1", 1), Use("web-2", 2, stopped=True)]
    decision = decide(versions, [], uses, Rules(keep_last=0), NOW)
    assert decision.kept == {1: ["machine web-1 runs it"], 2: ["machine web-2 runs it (stopped)"]}


def test_ancestors_of_what_stays_stay_and_name_a_few_of_them() -> None:
    base = Version(1, "base", 1, "sha256:b1", None, days(90))
    old_base = Version(2, "base", 2, "sha256:b2", None, days(80))
    mid = Version(3, "mid", 1, "sha256:m1", 1, days(70))
    webs = [Version(10 + n, "web", n + 1, f"sha256:w{n}", 3, days(60 - n)) for n in range(5)]
    decision = decide([base, old_base, mid, *webs], [], [], Rules(keep_last=5), NOW)
    why = {decision.versions[i].ref: reasons for i, reasons in decision.kept.items()}
    assert why["base:1"] == [
        "last 5 of base",
        "ancestor of mid:1",
        "ancestor of web:1",
        "ancestor of web:2",
        "ancestor of 3 more",
    ]
    assert why["mid:1"][0] == "last 5 of mid" and "ancestor of web:1" in why["mid:1"]
    # keep only one web version: its whole chain stays, and nothing else of base
    decision = decide([base, old_base, mid, *webs], [], [Use("w", 14)], Rules(keep_last=0), NOW)
    why = {decision.versions[i].ref: reasons for i, reasons in decision.kept.items()}
    assert why == {
        "base:1": ["ancestor of web:5"],
        "mid:1": ["ancestor of web:5"],
        "web:5": ["machine w runs it"],
    }
    assert [v.ref for v in decision.removed] == ["base:2", "web:1", "web:2", "web:3", "web:4"]


def test_a_pending_bake_keeps_its_parent_and_is_neither_kept_nor_removed() -> None:
    base = family("base", 3, 1)
    pending = Version(9, "web", 4, "sha256:p", 2, NOW, pending=True)
    decision = decide([*base, pending], [], [], Rules(keep_last=1), NOW)
    why = {decision.versions[i].ref: reasons for i, reasons in decision.kept.items()}
    assert why == {"base:2": ["parent of web:4, being baked"], "base:3": ["last 1 of base"]}
    assert [v.ref for v in decision.removed] == ["base:1"]


def test_pins_from_the_caller_keep_with_their_reason() -> None:
    decision = decide(
        family("web", 2, 1), [], [], Rules(keep_last=0), NOW, {1: ["a bake builds on it"]}
    )
    assert decision.kept == {1: ["a bake builds on it"]}


def test_a_parent_cycle_in_a_damaged_catalog_ends() -> None:
    a = Version(1, "a", 1, "sha256:a", 2, days(1))
    b = Version(2, "b", 1, "sha256:b", 1, days(1))
    decision = decide([a, b], [], [Use("m", 1)], Rules(keep_last=0), NOW)
    assert decision.kept == {1: ["machine m runs it"], 2: ["ancestor of a:1"]}


def test_rules_refuse_bad_values_and_flags_win_over_the_file() -> None:
    with pytest.raises(ValueError, match="duration"):
        Rules(keep_younger_than="30 days")
    with pytest.raises(ValueError, match="0 or more"):
        Rules(keep_last=-1)
    merged = Rules(keep_last=2).over(Rules(keep_last=5, keep_channel_history="14d"))
    assert merged == Rules(keep_last=2, keep_channel_history="14d")
    assert not Rules().active and Rules(keep_last=0).active


def test_ago_reads_like_a_person_says_it() -> None:
    assert [ago(timedelta(seconds=s)) for s in (5, 125, 7300, 3 * 86400 + 5)] == [
        "5s",
        "2m",
        "2h",
        "3d",
    ]


# gc carrying it out, on a real catalog and store


@dataclass
class Store:
    """A KILN_HOME with a catalog and store made directly (no bake needed)."""

    home: Home
    workspace: Workspace
    recipes: Path
    debs: dict[str, str] = field(default_factory=dict)  # package name -> sha256

    @property
    def layout(self) -> Layout:
        return self.workspace.layout

    @property
    def catalog(self) -> Catalog:
        return self.workspace.catalog

    def deb(self, name: str) -> str:
        """A cached .deb (with its by-name link and control file); returns its sha256."""
        sha = hashlib.sha256(name.encode()).hexdigest()
        cache = self.home.debs
        (cache / "by-name").mkdir(parents=True, exist_ok=True)
        (cache / "control").mkdir(exist_ok=True)
        (cache / f"{sha}.deb").write_bytes(name.encode())
        os.link(cache / f"{sha}.deb", cache / "by-name" / f"{name}_1_amd64.deb")
        (cache / "control" / sha).write_text(f"Package: {name}\n")
        self.debs[name] = sha
        return sha

    def image(
        self,
        name: str,
        parent: int | None = None,
        age: float = 50,
        debs: tuple[str, ...] = (),
        recipe: str | None = None,
    ) -> int:
        """Bytes in the store (layer, config, manifest, provenance) and its catalog rows."""
        with self.catalog.session() as session:
            version = Catalog.next_version(session, name)
        layer = self.layout.put_bytes(f"{name}:{version}".encode(), MEDIA_LAYER)
        parents: list[dict[str, object]] = []
        diff_ids: list[str] = []
        if parent is not None:
            with self.catalog.reading() as session:
                row = session.get(Image, parent)
                assert row is not None
                manifest = self.layout.read_json(row.digest)
            parents = manifest["layers"]
            diff_ids = [str(p["digest"]) for p in parents]
        config = self.layout.put_json(
            {"rootfs": {"type": "layers", "diff_ids": [*diff_ids, layer.digest]}}, MEDIA_CONFIG
        )
        manifest_desc = self.layout.put_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config.to_json(),
                "layers": [*parents, layer.to_json()],
            },
            MEDIA_MANIFEST,
        )
        provenance = artefacts.put(
            self.layout,
            manifest_desc,
            "provenance",
            "application/json",
            json.dumps({"of": f"{name}:{version}"}).encode(),
            "2026-01-01T00:00:00Z",
        )
        (self.home.layers / layer.hex).mkdir()
        path = self.recipes / (recipe or f"{name}.toml")
        with self.catalog.session() as session:
            row = Image(
                name=name,
                version=version,
                digest=manifest_desc.digest,
                config_digest=config.digest,
                parent_id=parent,
                cache_key=f"{name}{version}",
                recipe_path=str(path),
                recipe_digest="0" * 64,
                origin="parent" if parent else "scratch",
                created=NOW - timedelta(days=age),
                status="ok",
                size=layer.size,
                seconds=1.0,
                packages=[
                    Package(name=d, version="1", architecture="amd64", sha256=self.debs[d])
                    for d in debs
                ],
                artefacts=[
                    Artefact(
                        kind="provenance",
                        media_type="application/json",
                        manifest_digest=provenance.digest,
                        digest="sha256:" + "0" * 64,
                    )
                ],
            )
            session.add(row)
            session.flush()
            events.record(session, "baked", name, version, manifest_desc.digest)
            image_id = row.id
        self.layout.tag(f"{name}:{version}", manifest_desc, [provenance])
        return image_id

    def count(self, table: type[object]) -> int:
        with self.catalog.reading() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    home = Home(tmp_path / "home")
    home.ensure()
    monkeypatch.chdir(tmp_path)  # no ./kiln.toml but the test's own
    monkeypatch.delenv("KILN_POLICY", raising=False)
    workspace = Workspace(home)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    yield Store(home, workspace, recipes)
    workspace.close()


def refs_of(store: Store) -> set[str]:
    return set(store.layout.refs())


def test_gc_removes_what_retention_lets_go_and_everything_that_names_it(store: Store) -> None:
    for name in ("old", "shared", "locked", "kept"):
        store.deb(name)
    locked = Deb("locked", "amd64", "1", store.debs["locked"])
    lockfile.write(store.recipes / "base.toml.lock", Lock(None, 0, (locked,)), "base")
    base1 = store.image("base", age=90, debs=("shared",))
    base2 = store.image("base", age=80, debs=("shared", "kept"))
    web1 = store.image("web", parent=base1, age=70)  # a stopped machine's
    web2 = store.image("web", parent=base2, age=60, debs=("old",))  # promoted, then replaced
    web3 = store.image("web", parent=base2, age=50)  # the channel's head
    store.image("web", parent=base2, age=40)  # the newest
    with store.catalog.session() as session:
        for at, image_id, previous in ((30, web2, None), (5, web3, web2)):
            session.add(
                Assignment(
                    name="web",
                    channel="prod",
                    image_id=image_id,
                    previous_id=previous,
                    action="promote",
                    at=NOW - timedelta(days=at),
                    actor="t",
                )
            )
        moment = NOW - timedelta(days=1)
        for machine, image_id, removed in (("live", web1, None), ("gone", web2, moment)):
            session.add(
                Machine(
                    name=machine,
                    image_id=image_id,
                    image_ref="x",
                    digest="x",
                    folder="/nowhere",
                    created=moment,
                    stopped=moment,
                    removed=removed,
                    nspawn_pid=0,
                    leader_pid=0,
                )
            )
        session.add(
            TestRun(image_id=web2, machine="t", started=moment, ok=True, seconds=1.0, results="[]")
        )
        for model in (
            Signature(
                image_id=web2,
                digest="d",
                key_id="k",
                signature_manifest="s",
                created=moment,
                actor="t",
            ),
            Revocation(image_id=web2, reason="r", effective=moment, created=moment, actor="t"),
        ):
            session.add(model)
    web2_digest = store.layout.refs()["web:2"].digest
    web2_blobs = store.layout.read_json(web2_digest)["layers"][-1]["digest"].split(":")[1]
    assert (store.layout.blobs / web2_blobs).exists()

    dry = gc.collect_garbage(store.workspace, dry_run=True, keep_last=1)
    why = {row["ref"]: row["reasons"] for row in dry.to_json()["retention"]["kept"]}
    assert why == {
        "base:1": ["ancestor of web:1"],
        "base:2": ["last 1 of base", "ancestor of web:3", "ancestor of web:4"],
        "web:1": ["machine live runs it (stopped)"],
        "web:3": ["head of web:prod"],
        "web:4": ["last 1 of web"],
    }
    assert [item.path for item in dry.report.items if item.kind == "version"] == ["web:2"]
    dry_debs = {Path(i.path).name for i in dry.report.items if i.kind == "deb"}
    assert refs_of(store) >= {"web:2"} and store.count(TestRun) == 1  # nothing changed

    done = gc.collect_garbage(store.workspace, keep_last=1)
    assert [(i.kind, i.path) for i in done.report.items if i.kind in ("version", "deb")] == [
        (i.kind, i.path) for i in dry.report.items if i.kind in ("version", "deb")
    ]
    assert dry_debs == {f"{store.debs['old']}.deb"}  # shared, kept and the lock's stay
    assert sorted(refs_of(store)) == ["base:1", "base:2", "web:1", "web:3", "web:4"]
    assert not (store.layout.blobs / web2_blobs).exists()
    assert store.count(TestRun) == store.count(Signature) == store.count(Revocation) == 0
    with store.catalog.reading() as session:
        assert session.get(Image, web2) is None
        rows = session.scalars(select(Assignment).order_by(Assignment.id)).all()
        assert [(r.image_id, r.previous_id) for r in rows] == [(None, None), (web3, None)]
        assert session.scalars(select(Machine.name)).all() == ["live"]
        [event] = session.scalars(select(Event).where(Event.kind == "removed")).all()
        assert (event.name, event.version, event.digest) == ("web", 2, web2_digest)
        assert event.details()["machines"] == ["gone"]
        assert event.details()["rules"]["keep_last"] == 1
        assert len(session.scalars(select(Event).where(Event.kind == "baked")).all()) == 6
    cache = store.home.debs
    assert not (cache / f"{store.debs['old']}.deb").exists()
    assert not (cache / "by-name" / "old_1_amd64.deb").exists()
    assert not (cache / "control" / store.debs["old"]).exists()
    assert (cache / "by-name" / "locked_1_amd64.deb").exists()
    assert images.check(store.workspace).ok, images.check(store.workspace).faults


def test_a_version_number_is_never_given_again_after_gc(store: Store) -> None:
    for _ in range(3):
        store.image("web")
    store.image("base")
    gc.collect_garbage(store.workspace, keep_last=0)
    with store.catalog.reading() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0
        assert session.get(ImageName, "web") is not None
    assert store.image("web") and sorted(refs_of(store)) == ["web:4"]


def test_without_a_rule_no_version_goes(store: Store) -> None:
    store.image("web")
    store.image("web")
    collected = gc.collect_garbage(store.workspace)
    assert not collected.decision.rules.active
    assert collected.report.count("version") == 0 and len(refs_of(store)) == 2


def test_the_policy_file_sets_the_rules_and_flags_override_it(store: Store) -> None:
    for _ in range(3):
        store.image("web")
    policy = store.recipes / "kiln.toml"
    policy.write_text("[retention]\nkeep_last = 2\n")
    dry = gc.collect_garbage(store.workspace, dry_run=True, policy_file=policy)
    assert dry.policy["path"] == str(policy)
    assert [v.ref for v in dry.decision.removed] == ["web:1"]
    dry = gc.collect_garbage(store.workspace, dry_run=True, policy_file=policy, keep_last=1)
    assert [v.ref for v in dry.decision.removed] == ["web:1", "web:2"]
    with pytest.raises(BadInput, match="duration"):
        gc.collect_garbage(store.workspace, keep_younger_than="soon")


def test_a_machine_folder_without_readable_state_holds_every_version(store: Store) -> None:
    store.image("web")
    store.image("web")
    folder = store.home.root / "machines" / "starting"
    folder.mkdir(parents=True)
    (folder / "machine.json").write_text("")  # a launch that has not said its image yet
    collected = gc.collect_garbage(store.workspace, keep_last=1)
    assert collected.report.count("version") == 0 and len(refs_of(store)) == 2
    assert any("starting" in note for note in collected.notes)
    digest = store.layout.refs()["web:1"].digest
    started = Proc(pid=1, start=0)
    save(Folder(folder), State("starting", "web:1", digest, "boot", started, started))
    collected = gc.collect_garbage(store.workspace, keep_last=1)
    why = {row["ref"]: row["reasons"] for row in collected.to_json()["retention"]["kept"]}
    assert why == {"web:1": ["machine starting runs it"], "web:2": ["last 1 of web"]}


def test_gc_finishes_what_an_interrupted_gc_left_in_index_json(store: Store) -> None:
    web1 = store.image("web")
    store.image("web")
    digest = store.layout.refs()["web:1"].digest
    with store.catalog.session() as session:  # the catalog transaction of a killed gc
        session.query(Package).filter(Package.image_id == web1).delete()
        session.query(Artefact).filter(Artefact.image_id == web1).delete()
        session.query(Image).filter(Image.id == web1).delete()
        events.record(session, "removed", "web", 1, digest)
    assert images.check(store.workspace).faults  # index.json names web:1, the catalog not
    collected = gc.collect_garbage(store.workspace)  # no rule needed to finish it
    assert any("web:1" in item.path for item in collected.report.items if item.kind == "index")
    assert sorted(refs_of(store)) == ["web:2"]
    assert images.check(store.workspace).ok
    # a tag nobody removed is fsck's to report, never gc's to take
    store.layout.tag("stray:1", store.layout.refs()["web:2"])
    gc.collect_garbage(store.workspace, keep_last=1)
    assert "stray:1" in refs_of(store)
