"""A bake whose result is the bytes of a version its name has already (kiln.bake.again):
an older version's bytes are the newest again under a new number, sharing the manifest
and its referrers; the newest version's bytes add nothing; revoked bytes are refused.
The propagation plan reads the new number as a change, and the same bytes under an
earlier number as no change."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from kiln import refs
from kiln.app.workspace import Workspace
from kiln.bake import again
from kiln.bake.result import BakeResult
from kiln.catalog.lookup import ImageRow, Revoked
from kiln.lifecycle import propagation, revocation
from kiln.lifecycle.propagation import Row
from kiln.recipe import load_recipe
from kiln.store import artefacts
from tests.unit.lifecycle_rows import add_image, workspace

__all__ = ["workspace"]


def settle(workspace: Workspace, held: ImageRow, cached: bool = True) -> BakeResult:
    recipe_path = workspace.home.root / "base.toml"
    recipe_path.write_text('[image]\nname = "base"\n')
    recipe = load_recipe(recipe_path)
    return again.settle(
        workspace.catalog,
        workspace.layout,
        recipe,
        None,
        held,
        held.cache_key,
        time.monotonic(),
        cached=cached,
    )


def test_an_older_versions_bytes_are_the_newest_again(workspace: Workspace) -> None:
    first = add_image(workspace, "base", 1, stored=True)
    subject = workspace.layout.refs()["base:1"]
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lock = artefacts.put(
        workspace.layout, subject, artefacts.LOCK, artefacts.MEDIA_LOCK, b"x", created
    )
    workspace.layout.tag("base:1", subject, [lock])
    add_image(workspace, "base", 2, stored=True)

    made = settle(workspace, first)
    assert (made.ref, made.digest, made.again_of, made.cached) == (
        "base:3",
        first.digest,
        "base:1",
        True,
    )
    assert "base:1" in made.note
    newest = workspace.lookup.image(refs.parse("base"))
    assert (newest.ref, newest.digest) == ("base:3", first.digest)
    assert workspace.layout.refs()["base:3"].digest == first.digest
    assert artefacts.find(workspace.layout, newest.digest, artefacts.LOCK) == b"x"
    with workspace.catalog.reading() as session:
        from kiln.catalog.lifecycle import Event

        [event] = session.query(Event).filter_by(kind="baked", version=3).all()
        assert '"again_of": "base:1"' in event.detail

    # the same bytes again: they are the newest already, nothing is added
    same = settle(workspace, first, cached=False)
    assert (same.ref, same.same_as, same.again_of) == ("base:3", "base:3", "")
    assert "no new version" in same.note
    assert [r[0] for r in workspace.lookup.rows("SELECT version FROM images")] == [1, 2, 3]


def test_revoked_bytes_are_never_made_the_newest_again(workspace: Workspace) -> None:
    first = add_image(workspace, "base", 1, stored=True)
    add_image(workspace, "base", 2, stored=True)
    now = datetime.now(UTC)
    with workspace.catalog.session() as session:
        revocation.revoke(session, workspace.lookup, first, "CVE-1", now, now)
    with pytest.raises(Revoked, match="base:1 is revoked"):
        settle(workspace, first)
    with pytest.raises(Revoked):
        settle(workspace, first, cached=False)
    assert workspace.lookup.image(refs.parse("base")).ref == "base:2"


def row(id_: int, name: str, version: int, parent: int | None, digest: str) -> Row:
    return Row(id_, name, version, parent, digest, f"/r/{name}.toml")


def test_the_plan_follows_a_new_number_not_the_same_bytes_under_an_old_one() -> None:
    rows = [
        row(1, "base", 2, None, "sha256:b2"),
        row(2, "base", 3, None, "sha256:b3"),
        row(3, "base", 4, None, "sha256:b2"),  # base:2's bytes, the newest again
        row(4, "web", 3, 2, "sha256:w3"),  # on base:3: out of date
        row(5, "api", 1, 1, "sha256:a1"),  # on base:2: the same bytes as base:4
    ]
    named = {"web": "base", "api": "base"}
    plan = propagation.plan(rows, rows[2], named=named)
    assert [item.name for item in plan.items] == ["web"]
    assert "base:3 -> base:4" in plan.items[0].reason
