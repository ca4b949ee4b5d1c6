"""The rebake memo: a cache hit answered without the models agrees with the full path,
and anything that could change the key sends the bake down the full path again."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln.app.workspace import Workspace
from kiln.bake import memo
from kiln.bake.options import Options
from kiln.bake.pipeline import Parent, _key
from kiln.bake.plan import plan
from kiln.catalog import Image
from kiln.catalog.lookup import ImageRow
from kiln.home import Home
from kiln.recipe import load_recipe
from kiln.store.layout import MEDIA_MANIFEST, Descriptor
from kiln.store.stored import StoredImage

EXAMPLES = Path(__file__).parents[2] / "examples"
CHILD = """
[image]
name = "child"
parent = "tiny.toml"

[[steps]]
copy = "child/"
to = "/srv/"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "recipes"
    target.mkdir()
    shutil.copy(EXAMPLES / "tiny.toml", target)
    shutil.copytree(EXAMPLES / "tiny", target / "tiny")
    (target / "child").mkdir()
    (target / "child" / "page.txt").write_text("one\n")
    (target / "child.toml").write_text(CHILD)
    return target


def full_bake(workspace: Workspace, folder: Path) -> dict[str, str]:
    """What the full path does for a bake of ``folder`` up to its cache keys: memos left,
    and (standing in for the build) each key recorded as an image in catalog and store."""
    keys: dict[str, str] = {}
    digests: dict[str, str] = {}
    ordered, _named = plan(folder)
    for version, recipe in enumerate(ordered, 1):
        parent = None
        if recipe.parent_recipe_path() is not None:
            digest = digests["tiny"]
            row = ImageRow(1, "tiny", 1, digest, "", keys["tiny"], None, "", "")
            image = StoredImage("tiny:1", Descriptor(MEDIA_MANIFEST, digest, 2), {}, ())
            parent = Parent(row, image, [])
        key, _found, entry = _key(recipe, parent, None, Options())
        memo.remember(workspace.home, recipe.digest, None, entry)
        blob = workspace.layout.put_bytes(f'{{"v":{version}}}'.encode(), MEDIA_MANIFEST)
        with workspace.catalog.session() as session:
            session.add(
                Image(
                    name=recipe.name,
                    version=version,
                    digest=blob.digest,
                    config_digest=blob.digest,
                    cache_key=key,
                    recipe_path=str(recipe.path),
                    recipe_digest=recipe.digest,
                    origin="parent" if parent else "scratch",
                    created=datetime.now(UTC),
                    status="ok",
                    size=0,
                    seconds=0.0,
                )
            )
        keys[recipe.name], digests[recipe.name] = key, blob.digest
    return keys


def quick(home: Home, folder: Path) -> dict[str, str] | None:
    workspace = Workspace(home)
    try:
        found = memo.cached(workspace, sorted(folder.glob("*.toml")), None)
        return None if found is None else {r.name: r.cache_key for r in found}
    finally:
        workspace.close()


def test_a_hit_from_the_memo_has_the_full_paths_key(home: Home, folder: Path) -> None:
    workspace = Workspace(home)
    keys = full_bake(workspace, folder)
    workspace.close()
    assert quick(home, folder) == keys
    found = memo.cached(Workspace(home), [folder / "child.toml"], None)
    assert found is not None
    assert [r.name for r in found] == ["tiny", "child"], "parents first, as the plan says"


def test_an_input_changed_is_no_hit_until_it_is_back(home: Home, folder: Path) -> None:
    full_bake(Workspace(home), folder)
    page = folder / "child" / "page.txt"
    page.write_text("two\n")
    assert quick(home, folder) is None
    page.write_text("one\n")
    assert quick(home, folder) is not None
    page.unlink()
    assert quick(home, folder) is None  # the full path reports the missing input


def test_new_recipe_bytes_or_a_new_lock_have_no_memo(home: Home, folder: Path) -> None:
    full_bake(Workspace(home), folder)
    recipe = folder / "child.toml"
    recipe.write_text(CHILD + "# only a comment\n")
    assert quick(home, folder) is None
    recipe.write_text(CHILD)
    assert quick(home, folder) is not None
    (folder / "tiny.toml.lock").write_text("# a lock\n")
    assert quick(home, folder) is None


def test_a_parent_baked_anew_is_no_hit(home: Home, folder: Path) -> None:
    workspace = Workspace(home)
    full_bake(workspace, folder)
    with workspace.catalog.session() as session:
        tiny = session.query(Image).filter_by(name="tiny").one()
        tiny.cache_key = "0" * 64  # tiny's key now names no image: a miss
    workspace.close()
    assert quick(home, folder) is None


def test_the_memo_is_the_recipes_own(home: Home, folder: Path, tmp_path: Path) -> None:
    """A copy of the recipe elsewhere (same bytes) has its own memo: its inputs differ."""
    full_bake(Workspace(home), folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert quick(home, copy) is None
    assert load_recipe(copy / "child.toml").digest == load_recipe(folder / "child.toml").digest
