"""kiln rebuild --prove for real: the examples as baked (no lock file) and an image baked
from a lock file, rebuilt from their stored locks in a fresh KILN_HOME, give the same
digests; a step that writes something new each time fails with a diff naming the file;
an old version is rebuilt from the source archive its bake kept, not from the checkout as
it is now; a loopback mirror serves the packages with --no-package-cache, or is named for
what it lacks; the result shows in kiln where, kiln history and the proven_within gate."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import EXAMPLES, Kiln
from tests.integration.test_lock import index_repo

STAMP = (
    '[image]\nname = "stamp"\nparent = "tiny"\n\n'
    '[[steps]]\nrun = "cat /proc/sys/kernel/random/uuid > /etc/stamp"\n'
)


def prove(kiln: Kiln, ref: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = kiln.run("rebuild", ref, "--prove", "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, data


def baked_ref(kiln: Kiln, recipe: Path) -> str:
    ref: str = kiln.json("bake", str(recipe))["ref"]
    return ref


def no_scratch_left(kiln: Kiln) -> bool:
    return not list((kiln.home / "tmp").glob("proof-*"))


@pytest.fixture(scope="module")
def tiny(baked: Kiln) -> str:
    return baked_ref(baked, EXAMPLES / "tiny.toml")


def test_tiny_is_proven_and_the_proof_is_shown(baked: Kiln, tiny: str) -> None:
    code, data = prove(baked, tiny)
    assert code == 0 and data["ok"], data
    [link] = data["chain"]
    assert link["ref"] == tiny and link["rebuilt"] == link["digest"] == data["digest"]
    assert data["package_cache"] and data["inputs"] == [] and data["unserved"] == []
    assert no_scratch_left(baked)
    [version] = [v for v in baked.json("where", tiny)["versions"] if v["ref"] == tiny]
    assert version["proof"]["ok"] is True and version["proof"]["rebuilt"] == data["digest"]
    proved = [e for e in baked.json("history", "tiny") if e["kind"] == "proved"]
    assert proved[-1]["ref"] == tiny and proved[-1]["detail"]["ok"] is True
    assert "rebuilt to the same digest" in baked.run("history", "tiny").stdout


def test_a_step_that_differs_each_time_fails_with_a_diff(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "stamp.toml"
    recipe.write_text(STAMP)
    ref = baked_ref(baked, recipe)
    result = baked.run("rebuild", ref, "--prove", check=False)
    assert result.returncode == 1, result.stderr
    assert "~ /etc/stamp" in result.stdout and "not proven" in result.stdout
    _code, data = prove(baked, ref)
    parent, stamp = data["chain"]
    assert parent["ok"] and not stamp["ok"] and not data["ok"]
    assert stamp["diff"]["files"]["modified"] == ["/etc/stamp"]
    assert stamp["diff"]["packages"] == {"added": [], "removed": [], "changed": []}
    assert no_scratch_left(baked)

    policy = tmp_path / "kiln.toml"
    policy.write_text('[channels.prod]\nproven_within = "30d"\n')
    refused = baked.run("promote", ref, "prod", "--policy", str(policy), check=False)
    assert refused.returncode != 0
    assert f"kiln rebuild {ref} --prove" in refused.stdout + refused.stderr


def drop_source_archive(kiln: Kiln, digest: str) -> None:
    """Make the image one baked before kiln kept source archives: its referrer goes."""
    from kiln.store.layout import Layout

    def source_of(entry: dict[str, Any]) -> bool:
        notes = entry.get("annotations") or {}
        return (
            notes.get("org.kiln.subject") == digest and notes.get("org.kiln.artefact") == "source"
        )

    Layout(kiln.oci).prune(source_of)


def test_an_old_version_is_proven_after_the_checkout_moved_on(baked: Kiln, tmp_path: Path) -> None:
    """Proven from the source archive the bake kept, whatever the recipe folder holds now;
    without one (an image baked before kiln kept them), a changed or missing input means
    the proof cannot start: exit 2, not a failed proof."""
    folder = tmp_path / "recipes"
    shutil.copytree(EXAMPLES / "tiny", folder / "tiny")
    recipe = folder / "input.toml"
    recipe.write_text((EXAMPLES / "tiny.toml").read_text().replace('"tiny"', '"input"', 1))
    ref = baked_ref(baked, recipe)
    hello = folder / "tiny" / "hello"
    hello.write_text(hello.read_text() + "# edited\n")
    recipe.write_text(recipe.read_text() + "# and the recipe moved on too\n")
    code, data = prove(baked, ref)
    assert code == 0 and data["ok"], json.dumps(data, indent=1)
    [link] = data["chain"]
    assert link["source"] == "archive" and link["rebuilt"] == link["digest"]

    drop_source_archive(baked, link["digest"])
    result = baked.run("rebuild", ref, "--prove", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "prepare root" not in result.stderr, "nothing is baked"
    assert (
        f"not proven {ref}: cannot rebuild (the recipe folder changed since the bake and the "
        "image keeps no source archive)"
    ) in " ".join(result.stdout.split())
    result = baked.run("rebuild", ref, "--prove", "--json", check=False)
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["cannot"] and not data["ok"]
    assert ("recipe", "changed") in [(c["input"], c["state"]) for c in data["inputs"]]
    [version] = [v for v in baked.json("where", ref)["versions"] if v["ref"] == ref]
    assert version["proof"]["ok"] is True, "a proof that could not start is not a failed one"


@pytest.fixture
def mirror(baked: Kiln, tiny: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A flat apt repository on loopback holding tiny's locked .debs from the package cache."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for package in baked.json("inspect", tiny)["packages"]:
        deb = baked.home / "cache" / "debs" / f"{package['sha256']}.deb"
        shutil.copyfile(deb, repo / f"{package['name']}_{package['architecture']}.deb")
    index_repo(repo)
    handler = partial(SimpleHTTPRequestHandler, directory=str(repo))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield repo, f"deb [trusted=yes] http://127.0.0.1:{server.server_address[1]}/ ./"
    finally:
        server.shutdown()


def test_no_package_cache_fetches_from_the_mirror_and_names_what_it_lacks(
    baked: Kiln, tiny: str, mirror: tuple[Path, str]
) -> None:
    repo, line = mirror
    code, data = prove(baked, tiny, "--no-package-cache", "--mirror", line)
    assert code == 0 and data["ok"] and data["package_cache"] is False, data

    locked = {(p["name"], p["version"]) for p in baked.json("inspect", tiny)["packages"]}
    for deb in repo.glob("*.deb"):
        deb.unlink()
    index_repo(repo)
    result = baked.run(
        "rebuild", tiny, "--prove", "--no-package-cache", "--mirror", line, check=False
    )
    assert result.returncode == 1
    assert "no longer serves" in result.stdout
    code, data = prove(baked, tiny, "--no-package-cache", "--mirror", line)
    assert code == 1 and not data["ok"]
    assert {(d["name"], d["version"]) for d in data["unserved"]} == locked
    assert no_scratch_left(baked)


def stored_lock(kiln: Kiln, ref: str) -> str:
    """The lock kept with an image (its referrer of kind lock), read straight from the store."""
    index = json.loads((kiln.oci / "index.json").read_text())
    digest = kiln.json("inspect", ref)["digest"]
    for entry in index["manifests"]:
        annotations = entry.get("annotations") or {}
        if (
            annotations.get("org.kiln.subject") == digest
            and annotations.get("org.kiln.artefact") == "lock"
        ):
            blobs = kiln.oci / "blobs" / "sha256"
            manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
            layer = str(manifest["layers"][0]["digest"]).split(":")[1]
            return (blobs / layer).read_text()
    raise AssertionError(f"{ref} keeps no lock")


def test_the_examples_as_baked_are_proven(baked: Kiln, tmp_path: Path) -> None:
    """web and base as ``kiln bake examples/`` made them, without a lock file (apt chose
    the packages and marked the dependencies it pulled in): rebuilt from scratch (one
    bootstrap) from the locks they keep, both give their digests again, and the gate lets
    the proven image through."""
    base = baked_ref(baked, EXAMPLES / "base.toml")
    web = baked_ref(baked, EXAMPLES / "web.toml")
    kept = stored_lock(baked, web).splitlines()
    auto = [
        line.split()[1] for line in kept if line.startswith("package ") and line.endswith(" auto")
    ]
    assert "libffi8" in auto and "nginx-light" not in auto, "apt's marks are in the lock"

    code, data = prove(baked, web)
    assert code == 0 and data["ok"], json.dumps(data, indent=1)
    assert [link["ref"] for link in data["chain"]] == [base, web]
    assert all(link["ok"] and not link["locked"] for link in data["chain"])
    [version] = [v for v in baked.json("where", web)["versions"] if v["ref"] == web]
    assert version["proof"]["ok"] is True
    history = baked.json("history", "base")
    assert any(e["kind"] == "proved" and e["ref"] == base for e in history)

    policy = tmp_path / "kiln.toml"
    policy.write_text('[channels.prod]\nproven_within = "30d"\n')
    promoted = baked.json("promote", web, "prod", "--policy", str(policy))
    assert {g["gate"]: g["ok"] for g in promoted["gates"]}["proven"] is True


def test_a_locked_image_is_proven_from_its_lock_file(baked: Kiln, tmp_path: Path) -> None:
    """An image baked from a lock file (kiln lock) is rebuilt from that file's bytes."""
    shutil.copytree(EXAMPLES / "tiny", tmp_path / "tiny")
    recipe = tmp_path / "pinned.toml"
    recipe.write_text((EXAMPLES / "tiny.toml").read_text().replace('"tiny"', '"pinned"', 1))
    baked.run("lock", str(recipe))
    ref = baked_ref(baked, recipe)
    code, data = prove(baked, ref)
    assert code == 0 and data["ok"], json.dumps(data, indent=1)
    [link] = data["chain"]
    assert link["locked"] and link["rebuilt"] == link["digest"]
    assert stored_lock(baked, ref) == (tmp_path / "pinned.toml.lock").read_text()
