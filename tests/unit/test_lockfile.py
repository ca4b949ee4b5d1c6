"""Lock files: render, parse, diff, and errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.debcache import parse_filename
from kiln.errors import RecipeError
from kiln.recipe.lockfile import Deb, Lock, diff, lock_path, parse, rebase, write

SHA_A = "a" * 64
SHA_B = "b" * 64


def sample() -> Lock:
    return Lock(
        parent="sha256:" + "c" * 64,
        source_date_epoch=1700000000,
        packages=(
            Deb("zlib1g", "amd64", "1:1.2.13.dfsg-1", SHA_A),
            Deb("adduser", "all", "3.134", SHA_B),
        ),
    )


def test_render_is_sorted_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "web.toml.lock"
    write(path, sample(), "web.toml")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# kiln lock for web.toml")
    assert lines[1:3] == ["parent sha256:" + "c" * 64, "source-date-epoch 1700000000"]
    assert lines[3].startswith("package adduser all 3.134 ")
    assert lines[4].startswith("package zlib1g amd64 1:1.2.13.dfsg-1 ")
    again = parse(path)
    assert again.parent == sample().parent and again.source_date_epoch == 1700000000
    assert set(again.packages) == set(sample().packages)


def test_base_lock_has_no_parent(tmp_path: Path) -> None:
    path = tmp_path / "base.toml.lock"
    write(path, Lock(None, 1, ()), "base.toml")
    assert "parent -" in path.read_text()
    assert parse(path).parent is None


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "web.toml.lock"
    path.write_text(
        "# comment\n"
        "parent sha256:nothex\n"
        "package a all 1.0 notasha\n"
        f"package b all 1.0 {SHA_A}\n"
        f"package b all 2.0 {SHA_B}\n"
        "frobnicate\n"
    )
    with pytest.raises(RecipeError) as caught:
        parse(path)
    lines = [p.line for p in caught.value.problems]
    assert lines == [2, 3, 5, 6, 0]  # the missing source-date-epoch is about the whole file
    assert caught.value.exit_code == 2
    assert "kiln lock --update web.toml" in (caught.value.hint or "")


def test_diff_names_added_removed_and_changed() -> None:
    old = [Deb("a", "all", "1", SHA_A), Deb("b", "all", "1", SHA_A)]
    new = [Deb("a", "all", "2", SHA_B), Deb("c", "all", "1", SHA_A)]
    changes = diff(old, new)
    assert changes.lines() == ["+ c 1 (all)", "- b 1 (all)", "~ a 1 -> 2 (all)"]
    assert diff(old, old).empty()
    assert changes.to_json()["changed"] == [
        {"name": "a", "architecture": "all", "old": "1", "new": "2"}
    ], "the same word as kiln diff --json"
    assert set(changes.to_json()) == {"added", "removed", "changed"}


def test_a_rebuilt_file_under_the_same_version_is_a_change() -> None:
    assert not diff([Deb("a", "all", "1", SHA_A)], [Deb("a", "all", "1", SHA_B)]).empty()


def test_an_unknown_sha256_is_not_a_change() -> None:
    """An imported image's packages have no known .deb: the same version is the same."""
    known, unknown = Deb("a", "all", "1", SHA_A), Deb("a", "all", "1", "")
    assert diff([known], [unknown]).empty()
    assert diff([unknown], [known]).empty()
    assert diff([unknown], [unknown]).empty()
    assert not diff([unknown], [Deb("a", "all", "2", "")]).empty()


def test_lock_path_and_deb_file_names() -> None:
    assert lock_path(Path("/r/web.toml")) == Path("/r/web.toml.lock")
    deb = Deb("login", "amd64", "1:4.13+dfsg1-1", SHA_A)
    assert deb.filename == "login_1%3a4.13+dfsg1-1_amd64.deb"  # as apt names it
    assert parse_filename(deb.filename) == ("login", "1:4.13+dfsg1-1", "amd64")
    assert parse_filename("not-a-deb.txt") is None


def test_rebase_takes_the_new_parents_packages_and_keeps_the_recipes_own(tmp_path: Path) -> None:
    old_parent = [Deb("libc6", "amd64", "2.36-9", SHA_A), Deb("base-files", "amd64", "12.4", SHA_A)]
    new_parent = [
        Deb("libc6", "amd64", "2.36-9+deb12u4", SHA_B),
        Deb("base-files", "amd64", "12.4+deb12u1", SHA_B),
        Deb("tzdata", "all", "2025a", SHA_B),
    ]
    lock = Lock(
        "sha256:" + "c" * 64,
        1700000000,
        (
            Deb("libc6", "amd64", "2.36-9", SHA_A),  # inherited
            Deb("nginx-light", "amd64", "1.22.1-9", SHA_A),  # the recipe's own
        ),
    )
    new, changes = rebase(lock, old_parent, "sha256:" + "d" * 64, new_parent)
    assert new.parent == "sha256:" + "d" * 64 and new.source_date_epoch == 1700000000
    found = {d.name: d.version for d in new.packages}
    # base-files: the old parent had it and the image did not keep it, so it stays out
    assert found == {"libc6": "2.36-9+deb12u4", "tzdata": "2025a", "nginx-light": "1.22.1-9"}
    assert [(o.version, n.version) for o, n in changes.changed] == [("2.36-9", "2.36-9+deb12u4")]
    assert [d.name for d in changes.added] == ["tzdata"] and changes.removed == []
    write(tmp_path / "web.toml.lock", new, "web.toml")
    assert set(parse(tmp_path / "web.toml.lock").packages) == set(new.packages)


def test_rebase_keeps_a_package_the_recipe_upgraded_over_its_parent() -> None:
    old_parent = [Deb("openssl", "amd64", "3.0.11-1", SHA_A)]
    new_parent = [Deb("openssl", "amd64", "3.0.13-1", SHA_B)]
    lock = Lock(None, 1, (Deb("openssl", "amd64", "3.0.15-1", SHA_A),))
    new, changes = rebase(lock, old_parent, "sha256:" + "d" * 64, new_parent)
    assert [d.version for d in new.packages] == ["3.0.15-1"] and changes.empty()
