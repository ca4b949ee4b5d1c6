"""The cache key changes with every input of a bake, and only with those."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.bake.cachekey import compute, inputs
from kiln.digests import tree_digest
from kiln.recipe import load_recipe
from kiln.recipe.lockfile import lock_path

PARENT = "sha256:" + "a" * 64
OTHER_PARENT = "sha256:" + "b" * 64

RECIPE = """\
[image]
name = "web"
parent = "base"

[packages]
apt = ["nginx-light", "python3"]

[[steps]]
copy = "site/"
to = "/var/www/html/"

[[steps]]
ansible = "playbooks/web.yml"
"""

# The same recipe, written differently: comments, spacing, quoting, key order, inline arrays.
RECIPE_REFORMATTED = """\
# web: the same image, formatted by somebody else
[image]
parent='base'   # a catalog ref
name   =   "web"


[packages]
apt = [
    "nginx-light",  # small
    "python3",
]

[[steps]]
to = '/var/www/html/'
copy = 'site/'

[[steps]]
    ansible = "playbooks/web.yml"
"""


def make_tree(folder: Path) -> Path:
    """A recipe with a copied folder of two files and a playbook with a template beside it."""
    site = folder / "site"
    site.mkdir(parents=True)
    (site / "index.html").write_text("<h1>kiln</h1>\n")
    (site / "style.css").write_text("h1 { color: red }\n")
    os.chmod(site / "index.html", 0o644)
    playbooks = folder / "playbooks"
    (playbooks / "templates").mkdir(parents=True)
    (playbooks / "web.yml").write_text("- hosts: all\n  tasks: []\n")
    (playbooks / "templates" / "nginx.conf.j2").write_text("listen {{ port }};\n")
    recipe = folder / "web.toml"
    recipe.write_text(RECIPE)
    return recipe


def key_of(recipe: Path, parent: str | None = PARENT) -> str:
    return compute(load_recipe(recipe), parent)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "project")


def test_key_is_a_sha256_hex_and_stable(recipe: Path) -> None:
    key = key_of(recipe)
    assert len(key) == 64
    int(key, 16)
    assert key_of(recipe) == key


def test_identical_trees_in_different_places_give_the_same_key(tmp_path: Path) -> None:
    assert key_of(make_tree(tmp_path / "one")) == key_of(make_tree(tmp_path / "two" / "deeper"))


def flip_byte(recipe: Path) -> None:
    path = recipe.parent / "site" / "index.html"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


def add_file(recipe: Path) -> None:
    (recipe.parent / "site" / "robots.txt").write_text("")


def add_empty_folder(recipe: Path) -> None:
    (recipe.parent / "site" / "img").mkdir()


def rename_file(recipe: Path) -> None:
    site = recipe.parent / "site"
    (site / "style.css").rename(site / "main.css")


def chmod_file(recipe: Path) -> None:
    os.chmod(recipe.parent / "site" / "index.html", 0o600)


def edit_playbook(recipe: Path) -> None:
    (recipe.parent / "playbooks" / "web.yml").write_text("- hosts: all\n  tasks: [] \n")


def edit_template(recipe: Path) -> None:
    (recipe.parent / "playbooks" / "templates" / "nginx.conf.j2").write_text("listen 80;\n")


def add_role_file(recipe: Path) -> None:
    (recipe.parent / "playbooks" / "vars.yml").write_text("port: 80\n")


def change_packages(recipe: Path) -> None:
    recipe.write_text(RECIPE.replace('"python3"]', '"python3", "curl"]'))


def change_target(recipe: Path) -> None:
    recipe.write_text(RECIPE.replace("/var/www/html/", "/srv/www/"))


def lock_text(version: str) -> str:
    sha = "ab" * 32
    return f"parent -\nsource-date-epoch 1\npackage nginx-light amd64 {version} {sha}\n"


def add_lock(recipe: Path) -> None:
    lock_path(recipe).write_text(lock_text("1.22.1-9"))


@pytest.mark.parametrize(
    "change",
    [
        flip_byte,
        add_file,
        add_empty_folder,
        rename_file,
        chmod_file,
        edit_playbook,
        edit_template,
        add_role_file,
        change_packages,
        change_target,
        add_lock,
    ],
)
def test_key_changes_with_an_input(recipe: Path, change: Callable[[Path], None]) -> None:
    before = key_of(recipe)
    change(recipe)
    assert key_of(recipe) != before


def test_key_changes_when_the_lock_file_changes(recipe: Path) -> None:
    lock = recipe.with_name("web.toml.lock")
    assert lock_path(recipe) == lock
    unlocked = key_of(recipe)
    lock.write_text(lock_text("1.22.1-9"))
    first = key_of(recipe)
    lock.write_text(lock_text("1.22.1-10"))
    second = key_of(recipe)
    assert len({unlocked, first, second}) == 3
    lock.unlink()
    assert key_of(recipe) == unlocked


def test_a_lock_file_of_another_name_does_not_count(recipe: Path) -> None:
    before = key_of(recipe)
    recipe.with_name("web.lock").write_text("x\n")
    recipe.with_name("other.toml.lock").write_text("x\n")
    assert key_of(recipe) == before


def test_key_changes_with_the_parent_digest(recipe: Path) -> None:
    keys = {key_of(recipe, PARENT), key_of(recipe, OTHER_PARENT), key_of(recipe, None)}
    assert len(keys) == 3


def test_comments_and_formatting_do_not_count(recipe: Path) -> None:
    before = key_of(recipe)
    digest = load_recipe(recipe).digest
    recipe.write_text(RECIPE_REFORMATTED)
    assert load_recipe(recipe).digest != digest  # the bytes did change
    assert key_of(recipe) == before


def test_mtimes_do_not_count(recipe: Path) -> None:
    before = key_of(recipe)
    for path in [recipe, *recipe.parent.rglob("*")]:
        os.utime(path, (1, 1))
    assert key_of(recipe) == before


def test_moving_the_recipe_with_its_inputs_keeps_the_key(tmp_path: Path, recipe: Path) -> None:
    before = key_of(recipe)
    target = tmp_path / "elsewhere" / "nested"
    target.parent.mkdir()
    recipe.parent.rename(target)
    moved = target / recipe.name
    assert not recipe.exists()
    assert load_recipe(moved).path == moved.resolve()
    assert key_of(moved) == before


def test_inputs_name_each_step(recipe: Path) -> None:
    found = inputs(load_recipe(recipe))
    assert set(found) == {"steps[0].copy", "steps[1].ansible", "steps[1].playbook"}
    assert found["steps[0].copy"] == tree_digest(recipe.parent / "site")
    assert found["steps[1].ansible"] == tree_digest(recipe.parent / "playbooks")


def test_playbook_beside_the_recipe_formatting_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    recipe = tmp_path / "web.toml"
    recipe.write_text('[image]\nname = "web"\n\n[[steps]]\nansible = "site.yml"\n')
    before = key_of(recipe)
    recipe.write_text('# a comment\n[image]\nname = "web"\n\n[[steps]]\nansible = "site.yml"\n')
    assert key_of(recipe) == before


# --- tree_digest ---


def test_tree_digest_follows_content_names_and_modes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    os.chmod(tmp_path / "a" / "f", 0o644)
    seen = {tree_digest(tmp_path / "a")}
    (tmp_path / "a" / "f").write_text("y")
    seen.add(tree_digest(tmp_path / "a"))
    os.chmod(tmp_path / "a" / "f", 0o755)
    seen.add(tree_digest(tmp_path / "a"))
    (tmp_path / "a" / "f").rename(tmp_path / "a" / "g")
    seen.add(tree_digest(tmp_path / "a"))
    os.chmod(tmp_path / "a", 0o700)  # the top folder's own mode is not copied: not counted
    seen.add(tree_digest(tmp_path / "a"))
    assert len(seen) == 4


def test_a_copied_file_turned_into_a_folder_changes_the_key(tmp_path: Path) -> None:
    recipe = tmp_path / "web.toml"
    recipe.write_text('[image]\nname = "web"\n\n[[steps]]\ncopy = "conf"\nto = "/etc/conf"\n')
    conf = tmp_path / "conf"
    conf.write_text("setting = 1\n")
    os.chmod(conf, 0o644)
    before = key_of(recipe)
    conf.rename(tmp_path / "held")
    conf.mkdir()
    (tmp_path / "held").rename(conf / "conf")
    assert key_of(recipe) != before


def test_tree_digest_records_link_targets_without_following_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("one\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    before = tree_digest(tree)
    outside.write_text("two\n")  # what the link points at is not part of the tree
    assert tree_digest(tree) == before
    (tree / "link").unlink()
    (tree / "link").symlink_to(tmp_path / "other.txt")  # dangling is fine
    assert tree_digest(tree) != before


def test_tree_digest_link_is_not_the_same_as_its_target(tmp_path: Path) -> None:
    one = tmp_path / "one"
    two = tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "real").write_text("data\n")
    (one / "name").write_text("real")
    (two / "real").write_text("data\n")
    (two / "name").symlink_to("real")  # a file whose content equals the link's target
    assert tree_digest(one) != tree_digest(two)


def test_tree_digest_does_not_descend_into_linked_folders(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_text("x\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "dir-link").symlink_to(outside)
    before = tree_digest(tree)
    (outside / "more").write_text("y\n")
    assert tree_digest(tree) == before


def test_tree_digest_of_a_symlink_itself(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "b").write_text("a\n")
    (tmp_path / "link").symlink_to("a")
    before = tree_digest(tmp_path / "link")
    (tmp_path / "a").write_text("changed\n")
    assert tree_digest(tmp_path / "link") == before
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("b")
    assert tree_digest(tmp_path / "link") != before


def test_copy_through_a_symlinked_source_hashes_the_content(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "index.html").write_text("one\n")
    (tmp_path / "site").symlink_to("real")
    recipe = tmp_path / "web.toml"
    recipe.write_text('[image]\nname = "web"\n\n[[steps]]\ncopy = "site"\nto = "/srv/"\n')
    before = key_of(recipe)
    (tmp_path / "real" / "index.html").write_text("two\n")
    assert key_of(recipe) != before


def test_every_stage_that_writes_into_an_image_versions_the_key() -> None:
    """The versions come from the stages themselves (kiln.bake.build.stage), not a list:
    each is in the key document, and a stage's version is its own module's VERSION."""
    from kiln.bake import build, packages, seal, services
    from kiln.bake.bases import debian, imported
    from kiln.bake.cachekey import kiln_versions

    versions = kiln_versions()
    assert versions["pipeline"] == build.VERSION
    assert {k: versions[k] for k in build.stage_versions()} == {
        "debian": debian.VERSION,
        "import": imported.VERSION,
        "packages": packages.VERSION,
        "services": services.VERSION,
        "seal": seal.VERSION,
    }
    with pytest.raises(TypeError, match="two stages declare the version of 'seal'"):
        build.stage({"seal": 9})(lambda: None)


def test_the_quick_and_the_full_path_build_one_document(recipe: Path) -> None:
    """kiln.bake.memo keeps the parts only the recipe's bytes decide and rebuilds the rest
    through the same function as the full path: the same inputs give the same document."""
    from kiln.bake import cachekey, keydoc

    loaded = load_recipe(recipe)
    full = cachekey.document(loaded, PARENT, lock=None)
    rebuilt = keydoc.document(
        kiln=full["kiln"],
        recipe=full["recipe"],
        parent=PARENT,
        inputs=inputs(loaded),
        lock=None,
        sources=None,
    )
    assert rebuilt == full
    assert keydoc.key_of(rebuilt) == compute(loaded, PARENT)
