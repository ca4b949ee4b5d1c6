"""Lock files: render, parse, diff, and errors with line numbers; apt's automatic marks
(the lock's ``auto`` word and /var/lib/apt/extended_states, read, decided and written)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kiln.bake.aptmarks import (
    MAX_EXTENDED_STATES,
    apply_lock_marks,
    native_architecture,
    parse_extended_states,
    read_marks,
    render_extended_states,
    write_marks,
)
from kiln.bake.debcache import parse_filename
from kiln.bake.packages import downloads_only
from kiln.errors import KilnError, RecipeError
from kiln.recipe.lockfile import Deb, Lock, bump, diff, lock_path, parse, rebase, write
from kiln.rootpath import Root

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


def sample_adduser() -> Deb:
    return Deb("adduser", "all", "3.134", SHA_B)


def test_the_auto_word_round_trips_and_takes_no_part_in_identity(tmp_path: Path) -> None:
    path = tmp_path / "web.toml.lock"
    lock = Lock(None, 1, (Deb("libffi8", "amd64", "3.4.4-1", SHA_A, auto=True), sample_adduser()))
    write(path, lock, "web.toml")
    assert f"package libffi8 amd64 3.4.4-1 {SHA_A} auto\n" in path.read_text()
    assert f"package adduser all 3.134 {SHA_B}\n" in path.read_text()
    again = parse(path)
    assert {d.name: d.auto for d in again.packages} == {"libffi8": True, "adduser": False}
    assert Deb("a", "all", "1", SHA_A, auto=True) == Deb("a", "all", "1", SHA_A)
    assert len({Deb("a", "all", "1", SHA_A, auto=True), Deb("a", "all", "1", SHA_A)}) == 1
    assert diff(lock.packages, again.packages).empty()


def test_a_lock_without_auto_words_still_parses_and_a_wrong_last_word_is_an_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web.toml.lock"
    path.write_text(f"parent -\nsource-date-epoch 1\npackage adduser all 3.134 {SHA_B}\n")
    [deb] = parse(path).packages
    assert deb.auto is False
    path.write_text(
        f"parent -\nsource-date-epoch 1\npackage adduser all 3.134 {SHA_B} manual\n"
        f"package libffi8 amd64 3.4.4-1 {SHA_A} auto auto\n"
    )
    with pytest.raises(RecipeError) as caught:
        parse(path)
    assert [p.line for p in caught.value.problems] == [3, 4]
    assert "[auto]" in caught.value.problems[0].message


def test_rebase_and_bump_keep_the_images_own_marks() -> None:
    old_parent = [Deb("libc6", "amd64", "2.36-9", SHA_A)]
    new_parent = [Deb("libc6", "amd64", "2.36-9+deb12u4", SHA_B), Deb("tzdata", "all", "1", SHA_B)]
    lock = Lock(
        None,
        1,
        (
            Deb("libc6", "amd64", "2.36-9", SHA_A, auto=True),
            Deb("libffi8", "amd64", "3.4.4-1", SHA_A, auto=True),
        ),
    )
    moved, _ = rebase(lock, old_parent, "sha256:" + "d" * 64, new_parent)
    assert {d.name: d.auto for d in moved.packages} == {
        "libc6": True,
        "libffi8": True,
        "tzdata": False,  # the image never held it: nothing known, as the catalog has it
    }
    bumped, changes = bump(lock, [Deb("libffi8", "amd64", "3.4.4-2", SHA_B)])
    assert [(d.version, d.auto) for d in bumped.packages if d.name == "libffi8"] == [
        ("3.4.4-2", True)
    ]
    assert [n.version for _o, n in changes.changed] == ["3.4.4-2"]


# apt's extended_states, as kiln reads, decides and writes it

STATES = (
    b"Package: libffi8\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    b"Package: adduser\nArchitecture: amd64\nAuto-Installed: 1\n\n"
    b"Package: gpgv\nArchitecture: amd64\nAuto-Installed: 0\n\n"
    b"Package: libfoo1\nArchitecture: i386\nAuto-Installed: 1\n\n"
)


def test_extended_states_are_rendered_sorted_in_apts_layout() -> None:
    marks = parse_extended_states(STATES, "x", "amd64")
    assert sorted(m.package for m in marks.values() if m.auto) == ["adduser", "libffi8", "libfoo1"]
    assert render_extended_states(marks.values()) == (
        b"Package: adduser\nArchitecture: amd64\nAuto-Installed: 1\n\n"
        b"Package: libffi8\nArchitecture: amd64\nAuto-Installed: 1\n\n"
        b"Package: libfoo1\nArchitecture: i386\nAuto-Installed: 1\n\n"
    ), "sorted by (Package, Architecture); a manual stanza with nothing else goes"
    reordered = b"\n\n".join(reversed(STATES.rstrip(b"\n").split(b"\n\n"))) + b"\n\n"
    assert render_extended_states(parse_extended_states(reordered, "x", "amd64").values()) == (
        render_extended_states(marks.values())
    )
    assert render_extended_states([]) == b""


def test_extended_states_keep_other_fields_and_default_to_the_native_architecture() -> None:
    text = b"Package: foo\nAuto-Installed: 0\nX-Note: kept\n  over two lines\n"
    [mark] = parse_extended_states(text, "x", "arm64").values()
    assert mark.key == ("foo", "arm64") and not mark.auto
    assert render_extended_states([mark]) == (
        b"Package: foo\nArchitecture: arm64\nAuto-Installed: 0\nX-Note: kept\n  over two lines\n\n"
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (b"Package: a\nArchitecture: amd64\nAuto-Installed: 1\n\xff\n", 4, "UTF-8"),
        (b"Architecture: amd64\nAuto-Installed: 1\n", 1, "without a Package"),
        (b"Package: ../../etc\nAuto-Installed: 1\n", 1, "not a Debian package name"),
        (b"Package: a\nArchitecture: amd/64\n", 1, "not a Debian architecture"),
        (b"Package: a\nAuto-Installed: yes\n", 1, "not 0 or 1"),
        (b"Package: a\nAuto-Installed: 1\n\nPackage: a\nAuto-Installed: 0\n", 4, "second stanza"),
        (b"Package: a\nPackage: b\n", 2, "twice"),
        (b"just words\n", 1, "expected 'Field: value'"),
        (b" leading\n", 1, "continuation"),
        (b"Package: a\n more\n", 2, "one line"),
        (b"Package: a\x00\n", 1, "printable"),
    ],
)
def test_a_malformed_extended_states_is_an_error_naming_it(
    text: bytes, line: int, words: str
) -> None:
    with pytest.raises(KilnError) as caught:
        parse_extended_states(text, "web: /var/lib/apt/extended_states", "amd64")
    assert caught.value.message.startswith(f"web: /var/lib/apt/extended_states:{line}: ")
    assert words in caught.value.message


def test_extended_states_are_read_bounded_and_written_only_when_they_change(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "var/lib/apt").mkdir(parents=True)
    states = root / "var/lib/apt/extended_states"
    with Root(root) as image:
        assert read_marks(image, "x", "amd64") == ({}, b"")
        states.write_bytes(STATES)
        marks, before = read_marks(image, "x", "amd64")
        assert before == STATES and len(marks) == 4
        write_marks(image, marks.values(), before)
        canonical = states.read_bytes()
        assert canonical == render_extended_states(marks.values())
        inode = states.stat().st_ino
        write_marks(image, read_marks(image, "x", "amd64")[0].values(), canonical)
        assert states.stat().st_ino == inode, "nothing changed, nothing written"
        assert oct(states.stat().st_mode & 0o777) == "0o644"
        for mark in marks.values():
            mark.auto = False
        write_marks(image, marks.values(), canonical)
        assert not states.exists(), "no mark at all is no file, as in a fresh root"
        states.write_bytes(b"")
        write_marks(image, [], b"")
        assert not states.exists()
        states.write_bytes(b"Package: a\nAuto-Installed: 1\n" * (MAX_EXTENDED_STATES // 28 + 1))
        with pytest.raises(KilnError, match="larger than"):
            read_marks(image, "web: /var/lib/apt/extended_states", "amd64")
        states.unlink()
        os.mkfifo(states)
        with pytest.raises(KilnError, match="not a regular file"):
            read_marks(image, "x", "amd64")


def test_a_locked_bake_marks_what_it_installed_as_its_lock_says() -> None:
    """The parent marked libssl3 and tzdata; the lock says libffi8 (installed here) and the
    all-architecture adduser are auto, nginx-light (named) is not; the recipe names tzdata,
    which apt would have marked manual."""
    marks = parse_extended_states(
        b"Package: libssl3\nArchitecture: amd64\nAuto-Installed: 1\n\n"
        b"Package: tzdata\nArchitecture: amd64\nAuto-Installed: 1\n\n",
        "x",
        "amd64",
    )
    wanted = [
        Deb("libffi8", "amd64", "3.4.4-1", SHA_A, auto=True),
        Deb("adduser", "all", "3.134", SHA_B, auto=True),
        Deb("nginx-light", "amd64", "1.22.1-9", SHA_A),
    ]
    apply_lock_marks(marks, wanted, ["nginx-light", "tzdata=2025a"], "amd64")
    assert {key: mark.auto for key, mark in marks.items()} == {
        ("libssl3", "amd64"): True,
        ("tzdata", "amd64"): False,
        ("libffi8", "amd64"): True,
        ("adduser", "amd64"): True,
    }
    assert native_architecture([Deb("dpkg", "arm64", "1.21", SHA_A), *wanted]) == "arm64"
    assert native_architecture([Deb("x", "all", "1", SHA_A), *wanted]) == "amd64"


def test_only_real_downloads_are_harvested(tmp_path: Path) -> None:
    """What a bake's apt downloaded sits in a folder the image's scripts could write to:
    a *.deb that is a symlink (to a host file) or a folder goes; a symlinked folder is
    not harvested at all."""
    secret = tmp_path / "secret"
    secret.write_text("host file")
    archives = tmp_path / "archives"
    (archives / "partial").mkdir(parents=True)
    (archives / "real_1.0_all.deb").write_bytes(b"!<arch>\n")
    (archives / "link_1.0_all.deb").symlink_to(secret)
    (archives / "dir_1.0_all.deb").mkdir()
    assert downloads_only(archives)
    assert sorted(p.name for p in archives.iterdir()) == ["partial", "real_1.0_all.deb"]
    assert secret.read_text() == "host file"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.symlink_to(archives)
    assert not downloads_only(elsewhere) and not downloads_only(tmp_path / "missing")
