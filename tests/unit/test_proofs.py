"""Rebuild proofs without a bake: the proven_within gate and kiln where on real catalog rows,
the check of a recipe's inputs against what its bake recorded, the lock an image keeps
as a referrer, read back with its digest checked, and the source archive a proof rebuilds
from instead of the checkout (checked against the record once unpacked)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kiln.app import lifecycle, proof, proofsources, trace
from kiln.app.proofsources import CannotRebuild, Link
from kiln.app.workspace import Workspace
from kiln.bake import cachekey
from kiln.bake.debcache import Unserved
from kiln.bake.options import Options
from kiln.catalog.freshness import Proof
from kiln.catalog.lookup import ImageRow
from kiln.errors import BadInput, StoreError
from kiln.lifecycle import proofs
from kiln.recipe import load_recipe
from kiln.recipe.lockfile import Deb, Lock
from kiln.store import archive, artefacts
from tests.unit.lifecycle_rows import add_image, manifest, workspace, write_policy

__all__ = ["workspace"]  # the fixture

POLICY = '[channels.prod]\nproven_within = "30d"\n'
SHA = "ab" * 32


def add_proof(workspace: Workspace, image: ImageRow, ok: bool, ago: float = 0) -> None:
    with workspace.catalog.session() as session:
        session.add(
            Proof(
                image_id=image.id,
                digest=image.digest,
                rebuilt=image.digest if ok else "sha256:" + "0" * 64,
                ok=ok,
                at=datetime.now(UTC) - timedelta(seconds=ago),
                seconds=1.0,
                package_cache=True,
                actor="tests",
                detail="{}",
            )
        )


def unmet(workspace: Workspace, ref: str, policy: Path) -> dict[str, str]:
    result = lifecycle.promote(workspace, ref, "prod", policy_file=policy)
    return {o.gate: o.why for o in result.unmet}


def test_the_gate_wants_a_passed_proof_of_this_digest_young_enough(
    workspace: Workspace, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, POLICY)
    web = add_image(workspace, "web", 1)
    other = add_image(workspace, "web", 2)
    add_proof(workspace, other, ok=True)  # another digest proves nothing about web:1
    assert "no rebuild proof of web:1" in unmet(workspace, "web:1", policy)["proven"]
    assert "kiln rebuild web:1 --prove" in unmet(workspace, "web:1", policy)["proven"]

    add_proof(workspace, web, ok=True, ago=40 * 86400)
    assert "older than proven_within = '30d'" in unmet(workspace, "web:1", policy)["proven"]
    add_proof(workspace, web, ok=False, ago=3600)
    assert "failed" in unmet(workspace, "web:1", policy)["proven"]
    add_proof(workspace, web, ok=True, ago=60)
    promoted = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert promoted.promoted
    assert {o.gate for o in promoted.outcomes} == {"revoked", "proven"}


def test_a_channel_without_proven_within_asks_for_no_proof(
    workspace: Workspace, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, "[channels.prod]\ntests = false\n")
    add_image(workspace, "web", 1)
    result = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert result.promoted and "proven" not in {o.gate for o in result.outcomes}


def test_where_shows_the_newest_proof_of_each_image(workspace: Workspace) -> None:
    base = add_image(workspace, "base", 1)
    web = add_image(workspace, "web", 1, base)
    add_proof(workspace, web, ok=False, ago=600)
    add_proof(workspace, web, ok=True, ago=60)
    latest = proofs.latest(workspace.lookup)
    assert set(latest) == {web.id} and latest[web.id]["ok"] is True
    matrix = {row["name"]: row["latest"] for row in trace.where(workspace)["images"]}
    assert matrix["web"]["proof"]["ok"] is True
    assert matrix["web"]["proof"]["rebuilt"] == web.digest
    assert matrix["base"]["proof"] is None
    [version] = trace.where(workspace, "web")["versions"]
    assert version["proof"] == latest[web.id]


def recipe_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("<h1>kiln</h1>\n")
    (folder / "hello").write_text("#!/bin/sh\necho kiln\n")
    recipe = folder / "app.toml"
    recipe.write_text(
        '[image]\nname = "app"\n\n'
        '[[steps]]\ncopy = "hello"\nto = "/usr/local/bin/hello"\n\n'
        '[[steps]]\ncopy = "site/"\nto = "/srv/site/"\n'
    )
    return recipe


def baked_link(recipe_path: Path, tmp: Path | None = None) -> Link:
    """What a bake of the recipe as it is now recorded: catalog row and provenance."""
    recipe = load_recipe(recipe_path)
    dependencies: list[dict[str, Any]] = [
        {"name": "recipe", "uri": f"file:{recipe_path.name}", "digest": {"sha256": recipe.digest}}
    ]
    for m in cachekey.materials(recipe):
        dependencies.append(
            {
                "name": m.key,
                "uri": f"file:{m.path}",
                "digest": {"sha256": m.digest},
                "annotations": {"kiln.digest": m.kind},
            }
        )
    provenance = {"predicate": {"buildDefinition": {"resolvedDependencies": dependencies}}}
    key = cachekey.key_of(cachekey.document(recipe, None, lock=None))
    row = ImageRow(1, "app", 1, "sha256:" + SHA, "", key, None, str(recipe_path), recipe.digest)
    kept = None
    if tmp is not None:  # as a bake keeps it (kiln.bake.source)
        from kiln.bake import source

        kept = source.pack(recipe, cachekey.materials(recipe), tmp)
    return Link(row, b"", Lock(None, 0), False, provenance, kept)


def test_unchanged_inputs_pass_and_changed_or_missing_ones_are_named(tmp_path: Path) -> None:
    recipe = recipe_folder(tmp_path)
    link = baked_link(recipe)
    assert proofsources.check_inputs(link, Options()) == []

    recorded = proofs.recorded_inputs(link.provenance)
    assert set(recorded) == {"steps[0].copy", "steps[1].copy"}
    (recipe.parent / "hello").write_text("#!/bin/sh\necho changed\n")
    [changed] = proofsources.check_inputs(link, Options())
    assert (changed.what, changed.path) == ("steps[0].copy", "hello")
    assert changed.expected == f"sha256:{recorded['steps[0].copy'][1]}"
    [now] = [m for m in cachekey.materials(load_recipe(recipe)) if m.key == "steps[0].copy"]
    assert changed.found == f"sha256:{now.digest}" != changed.expected
    assert changed.to_json()["state"] == "changed"

    (recipe.parent / "site" / "index.html").unlink()
    (recipe.parent / "site").rmdir()
    found = {c.what: c for c in proofsources.check_inputs(link, Options())}
    assert found["steps[1].copy"].found is None, found
    assert found["steps[1].copy"].to_json()["state"] == "missing"
    assert "is missing" in found["steps[1].copy"].line()


def test_a_changed_recipe_is_named_before_its_inputs(tmp_path: Path) -> None:
    recipe = recipe_folder(tmp_path)
    link = baked_link(recipe)
    recipe.write_text(recipe.read_text() + "\n# a comment changes the bytes\n")
    [changed] = proofsources.check_inputs(link, Options())
    assert changed.what == "recipe" and changed.expected == f"sha256:{link.row.recipe_digest}"
    recipe.unlink()
    [gone] = proofsources.check_inputs(link, Options())
    assert gone.what == "recipe" and gone.found is None


def test_a_changed_cache_key_is_named(tmp_path: Path) -> None:
    recipe = recipe_folder(tmp_path)
    link = baked_link(recipe)
    link.row = replace(link.row, cache_key="0" * 64)
    [changed] = proofsources.check_inputs(link, Options())
    assert changed.what == "cache key" and changed.expected == "0" * 64


def test_the_lock_referrer_round_trips_and_is_checked(workspace: Workspace) -> None:
    layout = workspace.layout
    subject, _config = manifest(workspace, b"app:1")
    lock = Lock("sha256:" + SHA, 1767225600, (Deb("busybox-static", "amd64", "1:1.35.0-4", SHA),))
    text = lock.render("app.toml").encode()
    kept = artefacts.put(layout, subject, artefacts.LOCK, artefacts.MEDIA_LOCK, text, "2026")
    layout.tag("app:1", subject, [kept])
    found = artefacts.find(layout, subject.digest, artefacts.LOCK)
    assert found == text
    row = ImageRow(1, "app", 1, subject.digest, "", "", None, "/app.toml", "")
    again = proof._parse_lock(workspace, found, row)
    assert again == lock and again.digest == hashlib.sha256(text).hexdigest()

    blob = layout.blob_path("sha256:" + hashlib.sha256(text).hexdigest())
    blob.write_bytes(text.replace(b"1767225600", b"1767225601"))
    with pytest.raises(StoreError, match="corrupt"):
        artefacts.find(layout, subject.digest, artefacts.LOCK)


def test_an_image_without_a_kept_lock_cannot_be_proven(workspace: Workspace) -> None:
    add_image(workspace, "old", 1, stored=True)
    result = proof.rebuild(workspace, "old:1")
    assert not result.ok and result.chain == []
    assert result.cannot is not None and "baked before kiln kept locks: rebake it" in result.cannot
    assert result.to_json()["cannot"] == result.cannot
    assert not workspace.lookup.rows("SELECT id FROM proofs"), "nothing is recorded"
    with pytest.raises(BadInput, match="--prove"):
        proof.rebuild(workspace, "old:1", prove=False)


def test_every_version_the_mirror_lacks_is_named() -> None:
    debs = [Deb("a", "all", "1.0", SHA), Deb("b", "amd64", "2:3~rc1", SHA)]
    message = Unserved(debs, "E: Version '1.0' for 'a' was not found").message
    assert "2 locked packages" in message
    assert "a 1.0 (all)" in message and "b 2:3~rc1 (amd64)" in message


def test_a_proof_rebuilds_from_the_source_archive_not_the_checkout(tmp_path: Path) -> None:
    recipe = recipe_folder(tmp_path)
    link = baked_link(recipe, tmp_path / "tmp")
    assert link.source is not None
    (recipe.parent / "hello").write_text("#!/bin/sh\necho the checkout moved on\n")
    recipe.write_text(recipe.read_text() + "# and so did the recipe\n")
    assert proofsources.check_inputs(link, Options()), "the checkout is not what was baked"

    placed = proofsources.place(link, tmp_path / "proof", Options())
    assert placed.path != recipe and placed.digest == link.row.recipe_digest
    assert (placed.folder / "hello").read_text() == "#!/bin/sh\necho kiln\n"
    assert (placed.folder / "site" / "index.html").is_file()


def test_a_source_archive_that_does_not_hold_the_inputs_baked_from_is_refused(
    tmp_path: Path,
) -> None:
    recipe = recipe_folder(tmp_path)
    link = baked_link(recipe, tmp_path / "tmp")
    (recipe.parent / "hello").write_text("#!/bin/sh\necho swapped\n")
    link.source = archive.pack(recipe.parent, ["app.toml", "hello", "site"], tmp_path / "tmp")
    with pytest.raises(CannotRebuild, match="does not hold what app:1 was baked from") as caught:
        proofsources.place(link, tmp_path / "proof", Options())
    assert caught.value.exit_code == 2 and "steps[0].copy" in caught.value.message

    link.source = b"not a tar archive" * 64
    with pytest.raises(CannotRebuild, match="does not read as a tar archive"):
        proofsources.place(link, tmp_path / "proof2", Options())


def test_a_changed_checkout_of_an_image_without_a_source_archive_cannot_be_rebuilt(
    workspace: Workspace,
) -> None:
    """Baked before kiln kept source archives, and its recipe folder moved on since: the
    proof cannot start (exit 2 from kiln rebuild), and no failed proof is recorded."""
    row = add_image(workspace, "old", 1, stored=True)  # its recipe file is not there now
    subject = workspace.layout.refs()["old:1"]
    text = Lock(None, 1767225600, ()).render("old.toml").encode()
    kept = artefacts.put(workspace.layout, subject, artefacts.LOCK, artefacts.MEDIA_LOCK, text, "x")
    workspace.layout.tag("old:1", subject, [kept])
    result = proof.rebuild(workspace, row.ref)
    assert result.cannot == proofsources.NO_ARCHIVE and not result.ok
    assert [c.what for c in result.inputs] == ["recipe"]
    assert result.chain[0].source is None and result.chain[0].rebuilt == ""
    assert not workspace.lookup.rows("SELECT id FROM proofs"), "not recorded as a failure"


def test_a_recipe_path_parent_is_placed_from_the_chain(tmp_path: Path) -> None:
    """web names its parent by recipe path: its archive does not hold base.toml, the
    chain's parent gives it."""
    recipe = recipe_folder(tmp_path)
    (recipe.parent / "base.toml").write_text('[image]\nname = "base"\n')
    recipe.write_text(
        recipe.read_text().replace('name = "app"', 'name = "app"\nparent = "base.toml"')
    )
    link = baked_link(recipe, tmp_path / "tmp")
    base = load_recipe(recipe.parent / "base.toml")
    with pytest.raises(CannotRebuild, match=r"parent recipe base\.toml cannot be placed"):
        proofsources.place(link, tmp_path / "alone", Options())
    placed = proofsources.place(link, tmp_path / "proof", Options(), base)
    assert placed.parent_recipe_path() == placed.folder / "base.toml"
    assert (placed.folder / "base.toml").read_bytes() == base.path.read_bytes()
