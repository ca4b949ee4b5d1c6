"""A catalog and store written by kiln 0.1.0 (commit 5b7c126, before migrations) keep
working with today's kiln: opened, the catalog is upgraded, and every image, package,
artefact, machine and test run is still there; fsck is clean; a child bakes on an old
image. On the SQLite default and on PostgreSQL. The old kiln is checked out from git."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.postgres import Postgres
from kiln.catalog.revisions import HEAD
from kiln.home import Home
from tests.integration.conftest import REPO, Kiln
from tests.unit.test_migrations import OPEN, differences, migrate_to

OLD = "5b7c126"  # kiln 0.1.0, the release before catalog migrations

CHILD = """
[image]
name = "{name}"
description = "a child of tiny"
parent = "{parent}"

[[steps]]
run = "echo {name} > /etc/{name}"
"""

# Machines and test runs need a bootable image to make for real (a Debian bootstrap);
# the old kiln's own catalog code writes them into its own schema instead.
OLD_ROWS = """
import datetime, sys
from kiln.catalog import Catalog, Machine, TestRun
from kiln.home import Home
catalog = Catalog(Home.from_env().catalog_url)
now = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.UTC)
with catalog.session() as session:
    tiny = Catalog.resolve(session, "tiny")
    common = dict(image=tiny, image_ref=tiny.ref, digest=tiny.digest, created=now,
                  nspawn_pid=4242, leader_pid=4243, secret_keys='["api_token"]')
    session.add(Machine(name="old-box", folder=sys.argv[1], config='{"site_title": "old"}',
                        volumes='{"/var/lib/app": "/srv/app"}', throwaway=False, **common))
    session.add(Machine(name="gone-box", folder=sys.argv[1] + "-gone", config="{}",
                        volumes="{}", throwaway=True, stopped=now, removed=now, **common))
    session.add(TestRun(image=tiny, machine="test-tiny-1", started=now, ok=True, seconds=1.25,
                        healthy_seconds=0.5, converge=True, changes="[]", error="",
                        results='[{"command": "hello | grep -q kiln", "ok": true}]'))
catalog.close()
"""


@dataclass
class OldKiln(Kiln):
    """The kiln of commit OLD, run from its own source tree against the same home."""

    src: Path = Path()

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.src)}

    def python(self, code: str, *args: str) -> None:
        done = subprocess.run(
            [*self.argv()[:1], "-c", code, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def old_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{OLD}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {OLD} (kiln 0.1.0) is not in this clone's history: fetch it")
    tree = tmp_path_factory.mktemp("kiln-0.1.0")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD, "src", "examples"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def write_child(folder: Path, name: str, parent: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(CHILD.format(name=name, parent=parent))
    return path


def by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row.get("ref") or row["name"]: row for row in rows}


def same_as_before(before: Any, after: Any, where: str) -> None:
    """Every field the old kiln showed is still there with the same value (today's kiln
    may show more)."""
    if isinstance(before, dict):
        assert isinstance(after, dict), where
        for key, value in before.items():
            assert key in after, f"{where}.{key} is gone"
            same_as_before(value, after[key], f"{where}.{key}")
    elif isinstance(before, list):
        assert isinstance(after, list) and len(after) == len(before), where
        for number, (old, new) in enumerate(zip(before, after, strict=True)):
            same_as_before(old, new, f"{where}[{number}]")
    else:
        assert after == before, f"{where}: {before!r} became {after!r}"


def opened_by_rivals(kiln: Kiln) -> None:
    """Four processes open the old catalog at once: one migrates (it alone imports
    Alembic), the others wait for its lock and find the catalog done."""
    rivals = [
        subprocess.Popen(
            [*kiln.argv()[:1], "-c", OPEN, Home(kiln.home).catalog_url],
            env=kiln.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [rival.communicate(timeout=120) for rival in rivals]
    assert [rival.returncode for rival in rivals] == [0] * 4, outputs
    assert sorted(out.decode().strip() for out, _err in outputs) == [
        f"{HEAD} False",
        f"{HEAD} False",
        f"{HEAD} False",
        f"{HEAD} True",
    ]


def upgrade_from_old(old_src: Path, tmp_path: Path, bootable: bool = False) -> Kiln:
    """Bake with the old kiln, then open the same home with today's: all still there.
    With ``bootable``, the old kiln also bakes its Debian base (a bootstrap: ~40 s)."""
    home = tmp_path / "home"
    old = OldKiln(home, src=old_src / "src")
    old.python("import kiln, sys; assert kiln.__file__.startswith(sys.argv[1])", str(old.src))
    old.run("bake", str(old_src / "examples" / "tiny.toml"))
    if bootable:
        old.run("bake", str(old_src / "examples" / "base.toml"))
    old.run("bake", str(write_child(tmp_path / "recipes", "tiny-child", "tiny")))
    old.python(OLD_ROWS, str(tmp_path / "machines" / "old-box"))
    images = old.json("images")
    inspected = {image["ref"]: old.json("inspect", image["ref"]) for image in images}
    machines = old.json("ps", "--all")
    assert {i["ref"] for i in images} == {"tiny:1", "tiny-child:1"} | (
        {"base:1"} if bootable else set()
    )
    assert inspected["tiny:1"]["packages"] and inspected["tiny:1"]["tests"]
    assert {m["name"] for m in machines} == {"old-box", "gone-box"}

    kiln = Kiln(home)
    status = kiln.json("catalog", "status")
    assert status["state"] == "unversioned" and status["head"] == HEAD
    opened_by_rivals(kiln)
    same_as_before(by_name(images), by_name(kiln.json("images")), "images")
    for ref, before in inspected.items():
        same_as_before(before, kiln.json("inspect", ref), f"inspect {ref}")
    same_as_before(by_name(machines), by_name(kiln.json("ps", "--all")), "ps --all")
    assert [m["name"] for m in kiln.json("ps")] == ["old-box"]
    assert kiln.json("catalog", "status")["state"] == "current"
    fsck = kiln.json("fsck")
    assert fsck["ok"] and fsck["faults"] == [], fsck

    # a child on an old image bakes, then hits the cache; the old child still hits it
    new_child = write_child(tmp_path / "recipes", "tiny-new", "tiny:1")
    baked = kiln.json("bake", str(new_child))
    assert not baked["cached"]
    assert kiln.json("bake", str(new_child))["cached"]
    parents = kiln.json("inspect", "tiny-new")["parents"]
    assert [p["ref"] for p in parents] == ["tiny:1"]
    assert kiln.json("fsck")["ok"]
    return kiln


def test_a_sqlite_catalog_of_kiln_0_1_0_is_upgraded_and_its_image_boots(
    old_src: Path, tmp_path: Path
) -> None:
    kiln = upgrade_from_old(old_src, tmp_path, bootable=True)
    try:
        launched = kiln.json("run", "base:1", "--name", "old-base", "--wait")
        assert launched["image"] == "base:1" and launched["running_seconds"] is not None
        state = kiln.run("exec", "old-base", "--", "systemctl", "is-system-running")
        assert state.stdout.strip() == "running"
        assert kiln.run("exec", "old-base", "--", "hostname").stdout.strip() == "old-base"
    finally:
        kiln.run("rm", "--volumes", "old-base", check=False)
    assert "old-base" not in {m["name"] for m in kiln.json("ps")}
    catalog = kiln.home / "catalog.db"
    assert differences(f"sqlite:///{catalog}") == []
    with sqlite3.connect(catalog) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_a_postgresql_catalog_of_kiln_0_1_0_is_upgraded(
    old_src: Path,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, scratch = postgres.database(), postgres.database()
    monkeypatch.setenv("KILN_CATALOG_URL", url)
    kiln = upgrade_from_old(old_src, tmp_path)
    assert not (kiln.home / "catalog.db").exists(), "the SQLite default was not used"
    assert differences(url) == []  # images.size is BIGINT now, kiln_schema is gone
    migrate_to(scratch, "head")
    assert differences(scratch) == []
