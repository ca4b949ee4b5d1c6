"""Locks, the package cache, reproducible digests, sealing, provenance and SBOM, for real."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement

from tests.integration.aptrepo import build_deb, paragraph
from tests.integration.conftest import EXAMPLES, Kiln

UNREACHABLE = "http://127.0.0.1:9/debian"  # the discard port: nothing listens there


def lock_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.startswith("package")]


def latest(kiln: Kiln, name: str) -> dict[str, Any]:
    data: dict[str, Any] = kiln.json("inspect", name)
    return data


@pytest.fixture(scope="module")
def locked(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> tuple[Kiln, Path]:
    """The examples copied and locked in the session's store."""
    folder = tmp_path_factory.mktemp("locked") / "examples"
    shutil.copytree(EXAMPLES, folder, symlinks=True)
    results = baked.json("lock", str(folder))
    assert [r["state"] for r in results] == ["created"] * 3
    return baked, folder


@pytest.fixture(scope="module")
def rebuilt(locked: tuple[Kiln, Path], tmp_path_factory: pytest.TempPathFactory) -> Kiln:
    """A fresh KILN_HOME (empty package cache) baking the locked examples with --no-cache."""
    _kiln, folder = locked
    fresh = Kiln(tmp_path_factory.mktemp("fresh-home"))
    fresh.json("bake", str(folder), "--no-cache")
    return fresh


def test_lock_is_sorted_reviewable_text(locked: tuple[Kiln, Path]) -> None:
    kiln, folder = locked
    base, web = latest(kiln, "base"), latest(kiln, "web")
    web_lock = (folder / "web.toml.lock").read_text().splitlines()
    assert web_lock[0].startswith("# kiln lock for web.toml")
    assert f"parent {base['digest']}" in web_lock
    assert "parent -" in (folder / "base.toml.lock").read_text().splitlines()
    packages = lock_lines(folder / "web.toml.lock")
    assert packages == sorted(packages, key=lambda p: (p[1], p[2]))
    assert {(p[1], p[2], p[3]) for p in packages} == {
        (p["name"], p["architecture"], p["version"]) for p in web["packages"]
    }, "the locked bake holds exactly the locked versions"
    debs = kiln.home / "cache" / "debs"
    for _word, name, _arch, _version, sha, *_auto in packages[:5]:
        cached = debs / f"{sha}.deb"
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha, name


def test_lock_of_a_locked_recipe_is_current(locked: tuple[Kiln, Path]) -> None:
    kiln, folder = locked
    results = kiln.json("lock", str(folder / "web.toml"))
    assert [r["state"] for r in results] == ["current", "current"]


def test_locked_bakes_are_reproducible_in_a_fresh_home(
    locked: tuple[Kiln, Path], rebuilt: Kiln
) -> None:
    kiln, folder = locked
    for name in ("tiny", "base", "web"):
        assert latest(rebuilt, name)["digest"] == latest(kiln, name)["digest"], name
    again = rebuilt.json("bake", str(folder / "web.toml"), "--no-cache")
    assert not again["cached"]
    assert again["digest"] == latest(kiln, "web")["digest"]
    diff = rebuilt.json("diff", "web:1", again["ref"])
    assert diff["files"] == {"added": [], "modified": [], "deleted": []}
    assert diff["packages"] == {"added": [], "removed": [], "changed": []}


def test_locked_rebuild_needs_no_mirror(locked: tuple[Kiln, Path], rebuilt: Kiln) -> None:
    """With a warm cache, a locked rebuild works with the mirror unreachable and no network."""
    kiln, folder = locked
    result = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            *rebuilt.argv("bake", str(folder), "--no-cache", "--json", "--mirror", UNREACHABLE),
        ],
        env=rebuilt.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    digests = {r["name"]: r["digest"] for r in json.loads(result.stdout)}
    assert digests == {name: latest(kiln, name)["digest"] for name in ("tiny", "base", "web")}


def index_repo(folder: Path) -> None:
    """A flat repository's Packages file: every .deb in ``folder``."""
    paragraphs = [paragraph(deb, f"./{deb.name}") for deb in sorted(folder.glob("*.deb"))]
    (folder / "Packages").write_text("\n".join(paragraphs))


@pytest.fixture
def demo_repo(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A small apt repository served over HTTP on loopback."""
    repo = tmp_path / "repo"
    repo.mkdir()
    build_deb(repo, "kiln-demo", "1.0")
    index_repo(repo)
    handler = partial(SimpleHTTPRequestHandler, directory=str(repo))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield repo, f"deb [trusted=yes] http://127.0.0.1:{server.server_address[1]}/ ./"
    finally:
        server.shutdown()


def test_lock_update_reports_a_real_upgrade(
    locked: tuple[Kiln, Path], demo_repo: tuple[Path, str], tmp_path: Path
) -> None:
    kiln, _folder = locked
    repo, mirror = demo_repo
    recipe = tmp_path / "demo.toml"
    recipe.write_text(
        '[image]\nname = "demo"\nparent = "base"\n\n[packages]\napt = ["kiln-demo"]\n'
    )
    [created] = kiln.json("lock", str(recipe), "--mirror", mirror)
    assert created["state"] == "created"
    demo = {p[1]: p for p in lock_lines(tmp_path / "demo.toml.lock")}["kiln-demo"]
    assert demo[2:4] == ["all", "1.0"]

    build_deb(repo, "kiln-demo", "1.1")
    index_repo(repo)
    update = kiln.run("lock", "--update", str(recipe), "--mirror", mirror)
    assert "~ kiln-demo 1.0 -> 1.1 (all)" in update.stdout
    versions = {p["name"]: p["version"] for p in latest(kiln, "demo")["packages"]}
    assert versions["kiln-demo"] == "1.1"

    lock = tmp_path / "demo.toml.lock"
    lock.write_text(lock.read_text().replace("kiln-demo all 1.1", "kiln-demo all 9.9"))
    failed = kiln.run("bake", str(recipe), "--mirror", mirror, check=False)
    assert failed.returncode == 1
    assert "kiln-demo" in failed.stderr and "9.9" in failed.stderr


def test_seal_removes_volatile_data_and_says_so(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "dirty.toml"
    recipe.write_text(
        '[image]\nname = "dirty"\nparent = "tiny"\n\n'
        "[[steps]]\n"
        'run = """mkdir -p /var/log/app /etc/ssh /srv/cache /var/lib/dbus\n'
        "echo started > /var/log/app/app.log; echo junk > /tmp/junk\n"
        "echo key > /etc/ssh/ssh_host_ed25519_key; echo 0123456789abcdef > /etc/machine-id\n"
        'echo big > /srv/cache/blob; echo keep > /srv/keep"""\n\n'
        '[seal]\npaths = ["/srv/cache/*"]\n'
    )
    ref = json.loads(baked.run("bake", str(recipe), "--json").stdout)["ref"]
    checks = {c["path"]: c for c in baked.json("inspect", ref)["seal"]}
    assert all(c["ok"] for c in checks.values())
    assert checks["/var/log/**"]["removed"] >= 1 and checks["/srv/cache/*"]["removed"] == 1
    assert checks["/etc/ssh/ssh_host_*"]["removed"] == 1
    rootfs = tmp_path / "rootfs.tar"
    baked.run("export", ref, "--format", "rootfs-tar", "-o", str(rootfs))
    target = tmp_path / "root"
    target.mkdir()
    subprocess.run(["tar", "-xf", str(rootfs), "-C", str(target)], check=True)
    assert (target / "var/log/app").is_dir() and not list((target / "var/log/app").iterdir())
    assert not (target / "tmp/junk").exists()
    assert not (target / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (target / "etc/machine-id").read_text() == ""
    assert not (target / "srv/cache/blob").exists() and (target / "srv/keep").exists()


def test_sbom_validates_and_provenance_is_in_toto(locked: tuple[Kiln, Path]) -> None:
    kiln, _folder = locked
    web = latest(kiln, "web")
    text = kiln.run("inspect", "web", "--sbom").stdout
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom = json.loads(text)
    assert len(sbom["components"]) == len(web["packages"])
    assert sbom["metadata"]["component"]["type"] == "container"
    nginx = next(c for c in sbom["components"] if c["name"] == "nginx-light")
    assert nginx["purl"].startswith("pkg:deb/debian/nginx-light@")
    assert nginx["hashes"][0]["alg"] == "SHA-256"

    provenance = kiln.run("inspect", "web", "--provenance").stdout
    message = json_format.Parse(provenance, statement_pb2.Statement())
    Statement.copy_from_pb(message).validate()
    data = json.loads(provenance)
    assert data["predicateType"] == "https://slsa.dev/provenance/v1"
    assert data["subject"][0]["digest"]["sha256"] == web["digest"].split(":")[1]
    names = {d.get("name") for d in data["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert {"recipe", "parent", "lock", "steps[0].copy", "steps[1].ansible"} <= names
    metadata = data["predicate"]["runDetails"]["metadata"]
    assert metadata["startedOn"] <= metadata["finishedOn"]
    assert kiln.json("fsck")["ok"]


def test_after_a_lock_the_name_means_the_locked_image(fresh: Kiln, tmp_path: Path) -> None:
    """The resolving build of kiln lock is thrown away: no catalog version names it, so
    `tiny` and `parent = "tiny"` mean the image baked from the lock, after --update too."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(EXAMPLES / "tiny.toml", folder)
    shutil.copytree(EXAMPLES / "tiny", folder / "tiny")
    recipe = folder / "tiny.toml"
    unlocked = fresh.json("bake", str(recipe))
    assert unlocked["ref"] == "tiny:1"

    [created] = fresh.json("lock", str(recipe))
    assert created["state"] == "created"
    locked = fresh.json("bake", str(recipe))
    assert locked["cached"], "the lock's own bake made the locked image"
    assert [i["ref"] for i in fresh.json("images")] == ["tiny:1", locked["ref"]]
    assert locked["ref"] == "tiny:2", "one version for a lock, not two"
    assert fresh.json("inspect", "tiny")["digest"] == locked["digest"]

    [update] = fresh.json("lock", "--update", str(recipe))
    assert update["state"] == "unchanged"
    assert update["diff"] == {"added": [], "removed": [], "changed": []}
    assert [i["ref"] for i in fresh.json("images")] == ["tiny:1", "tiny:2"]
    assert fresh.json("inspect", "tiny")["digest"] == locked["digest"]

    child = folder / "child.toml"
    child.write_text('[image]\nname = "child"\nparent = "tiny"\n\n[[steps]]\nrun = "true"\n')
    fresh.json("lock", str(child))
    assert f"parent {locked['digest']}" in (folder / "child.toml.lock").read_text().splitlines()
    assert fresh.json("inspect", "child")["parents"][0]["ref"] == "tiny:2"
    assert not list((fresh.home / "builds").iterdir()), "the resolving build left its folder"
