"""The package cache's file names: apt quotes an epoch's colon as %3a, and kiln finds a
.deb under any name apt or an older kiln gave it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.debcache import PackageCache, find_archived, parse_filename
from kiln.recipe.lockfile import Deb, apt_quote

SHA = "d" * 64
BUSYBOX = Deb("busybox-static", "amd64", "1:1.35.0-4+deb12u1+b1", SHA)


def test_apt_quotes_an_epoch_in_lower_case() -> None:
    assert apt_quote("1:1.35.0-4+deb12u1+b1") == "1%3a1.35.0-4+deb12u1+b1"
    assert BUSYBOX.filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
    assert apt_quote("2.36-9+deb12u9") == "2.36-9+deb12u9"


@pytest.mark.parametrize(
    "name",
    [
        "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb",  # apt's archives
        "busybox-static_1%3A1.35.0-4+deb12u1+b1_amd64.deb",  # kiln before this fix
        "busybox-static_1.35.0-4+deb12u1+b1_amd64.deb",  # the pool's name
    ],
)
def test_a_cached_deb_is_found_under_every_name(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"deb")
    assert find_archived(tmp_path, BUSYBOX) == tmp_path / name
    assert parse_filename(name) in {
        ("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64"),
        ("busybox-static", "1.35.0-4+deb12u1+b1", "amd64"),
    }


def test_both_quotings_parse_to_the_same_version() -> None:
    lower = parse_filename("busybox-static_1%3a1.35.0_amd64.deb")
    upper = parse_filename("busybox-static_1%3A1.35.0_amd64.deb")
    assert lower == upper == ("busybox-static", "1:1.35.0", "amd64")


def test_a_missing_deb_is_none(tmp_path: Path) -> None:
    assert find_archived(tmp_path, BUSYBOX) is None
    (tmp_path / "busybox-static_1%3a9.9_amd64.deb").write_bytes(b"other version")
    assert find_archived(tmp_path, BUSYBOX) is None


def test_harvest_takes_apts_names_and_stages_them_under_apts_names(tmp_path: Path) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / BUSYBOX.filename).write_bytes(b"a deb")
    cache = PackageCache(tmp_path / "cache")
    found = cache.harvest(archives)
    [deb] = found.values()
    assert deb.key == ("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64")
    assert (cache.by_name / BUSYBOX.filename).is_file()
    staged = tmp_path / "staged"
    cache.stage([deb], staged)
    assert [p.name for p in staged.iterdir()] == [BUSYBOX.filename]
