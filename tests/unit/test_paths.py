"""Paths inside an image root, owners from the image's own files, and the host's apt sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.apt.sources import Source, host_sources, mirror_lines
from kiln.errors import BadInput
from kiln.rootpath import Root, lookup_ids

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SECURITY = "http://security.debian.org/debian-security"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for folder in ["etc/nginx", "var", "usr/lib", "srv/site"]:
        (root / folder).mkdir(parents=True)
    return root


# resolution inside a root: tests/unit/test_rootpath.py


# --- lookup_ids ---


@pytest.fixture
def users(root: Path) -> Path:
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
        "www:x:1001:1002::/home/www:/bin/sh\n"
        "\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nwww-data:x:33:\nweb:x:1002:www\nwww:x:1003:\n")
    return root


@pytest.mark.parametrize(
    ("owner", "ids"),
    [
        ("root", (0, 0)),
        ("www-data", (33, 33)),
        ("www", (1001, 1003)),  # the group of the same name, not the passwd primary group
        ("www:web", (1001, 1002)),
        ("www-data:root", (33, 0)),
        ("1000", (1000, 1000)),
        ("1000:1002", (1000, 1002)),
        ("www-data:5", (33, 5)),
    ],
)
def test_lookup_ids(users: Path, owner: str, ids: tuple[int, int]) -> None:
    assert lookup_ids(users, owner) == ids


def test_unknown_user_raises_bad_input(users: Path) -> None:
    with pytest.raises(BadInput, match="user 'daemon'"):
        lookup_ids(users, "daemon")  # exists on almost every host, not in this image


def test_unknown_group_raises_bad_input(users: Path) -> None:
    with pytest.raises(BadInput, match="group 'nogroup'"):
        lookup_ids(users, "www-data:nogroup")


def test_lookup_reads_the_image_files_through_its_symlinks(users: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    (host / "passwd").write_text("daemon:x:4242:4242::/:/bin/sh\n")
    moved = users / "usr" / "etc"
    (users / "etc").rename(moved)
    (users / "etc").symlink_to(str(host))  # outside the root on the host, inside it here
    with pytest.raises(BadInput):
        lookup_ids(users, "daemon")
    (users / "etc").unlink()
    (users / "etc").symlink_to("/usr/etc")
    with Root(users) as root:
        assert lookup_ids(root, "www-data") == (33, 33)


def test_user_in_a_root_without_passwd(root: Path) -> None:
    with pytest.raises(BadInput):
        lookup_ids(root, "root")
    assert lookup_ids(root, "0:0") == (0, 0)


# --- apt sources ---


ONE_LINE = f"""\
# the host's sources
deb http://deb.debian.org/debian bookworm main non-free-firmware
deb-src http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by={KEYRING}] {SECURITY} bookworm-security main
deb http://deb.debian.org/debian bookworm-updates main  # trailing comment
#deb http://deb.debian.org/debian bookworm-backports main
"""

DEB822 = f"""\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: {KEYRING}

# backports, switched off
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Enabled: no

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
"""


def apt_dir(tmp_path: Path, sources_list: str | None = None, **parts: str) -> Path:
    etc_apt = tmp_path / "apt"
    (etc_apt / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (etc_apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (etc_apt / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return etc_apt


def test_one_line_sources(tmp_path: Path) -> None:
    found = host_sources(etc_apt=apt_dir(tmp_path, ONE_LINE))
    assert found == [
        Source("http://deb.debian.org/debian", "bookworm", ("main", "non-free-firmware")),
        Source(SECURITY, "bookworm-security", ("main",), KEYRING),
        Source("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
    ]


def test_deb822_sources(tmp_path: Path) -> None:
    found = host_sources(etc_apt=apt_dir(tmp_path, debian_sources=DEB822))
    assert found == [
        Source("http://deb.debian.org/debian", "bookworm", ("main", "contrib"), KEYRING),
        Source("http://deb.debian.org/debian", "bookworm-updates", ("main", "contrib"), KEYRING),
    ]


def test_other_file_names_in_sources_list_d_are_ignored(tmp_path: Path) -> None:
    etc_apt = apt_dir(tmp_path, debian_list_save=ONE_LINE, debian_sources_disabled=DEB822)
    assert host_sources(etc_apt=etc_apt) == []


def test_mirror_lines_rewrite_the_host_codename(tmp_path: Path) -> None:
    etc_apt = apt_dir(tmp_path, ONE_LINE, debian_sources=DEB822)
    lines = mirror_lines(
        "trixie", None, etc_apt=etc_apt, codename="bookworm", lists=tmp_path / "lists"
    )
    assert lines == [
        "deb http://deb.debian.org/debian trixie main",
        f"deb [signed-by={KEYRING}] {SECURITY} trixie-security main",
        "deb http://deb.debian.org/debian trixie-updates main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian trixie main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian trixie-updates main",
    ]
    assert not any("bookworm" in line or "deb-src" in line for line in lines)
    assert not any("backports" in line for line in lines)


def test_mirror_lines_for_the_host_suite_keep_it(tmp_path: Path) -> None:
    etc_apt = apt_dir(tmp_path, debian_sources=DEB822)
    lines = mirror_lines(
        "bookworm", None, ("main", "contrib"), etc_apt=etc_apt, codename="bookworm"
    )
    assert lines == [
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm main contrib",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm-updates main contrib",
    ]


def test_mirror_lines_are_deduplicated(tmp_path: Path) -> None:
    line = "deb http://deb.debian.org/debian bookworm main\n"
    etc_apt = apt_dir(tmp_path, line, extra_list=line)
    assert mirror_lines("trixie", None, etc_apt=etc_apt, codename="bookworm") == [
        "deb http://deb.debian.org/debian trixie main"
    ]


def test_mirror_override_gives_one_line(tmp_path: Path) -> None:
    etc_apt = apt_dir(tmp_path, ONE_LINE, debian_sources=DEB822)
    lines = mirror_lines(
        "trixie", "http://mirror.example/debian", ("main", "contrib"), etc_apt=etc_apt
    )
    assert lines == ["deb http://mirror.example/debian trixie main contrib"]


def test_mirror_override_needs_no_host_sources(tmp_path: Path) -> None:
    lines = mirror_lines("sid", "http://m/debian", etc_apt=tmp_path / "missing")
    assert lines == ["deb http://m/debian sid main"]


@pytest.mark.parametrize(
    "sources_list",
    [
        None,
        "",
        "deb http://archive.ubuntu.com/ubuntu noble main universe\n",
        "deb-src http://deb.debian.org/debian bookworm main\n",
    ],
)
def test_no_debian_sources_raises_bad_input(tmp_path: Path, sources_list: str | None) -> None:
    etc_apt = apt_dir(tmp_path, sources_list)
    with pytest.raises(BadInput, match="no Debian apt sources") as caught:
        mirror_lines("trixie", None, etc_apt=etc_apt, codename="bookworm")
    assert caught.value.hint is not None
    assert "mirror" in caught.value.hint


def test_no_debian_sources_when_all_are_disabled(tmp_path: Path) -> None:
    disabled = DEB822.replace("Suites: bookworm bookworm-updates", "Suites: bookworm\nEnabled: no")
    etc_apt = apt_dir(tmp_path, debian_sources=disabled)
    with pytest.raises(BadInput):
        mirror_lines("trixie", None, etc_apt=etc_apt, codename="bookworm")


def test_third_party_repositories_are_not_bootstrap_mirrors(tmp_path: Path) -> None:
    etc_apt = apt_dir(
        tmp_path,
        "deb http://deb.debian.org/debian bookworm main\n",
        docker_list="deb [signed-by=/etc/apt/keyrings/docker.asc] "
        "https://download.docker.com/linux/debian bookworm stable\n",
    )
    lines = mirror_lines("trixie", None, etc_apt=etc_apt, codename="bookworm")
    assert lines == ["deb http://deb.debian.org/debian trixie main"]


def test_recipe_components_apply_to_host_sources(tmp_path: Path) -> None:
    etc_apt = apt_dir(tmp_path, "deb http://deb.debian.org/debian bookworm main\n")
    lines = mirror_lines("trixie", None, ("main", "contrib"), etc_apt=etc_apt, codename="bookworm")
    assert lines == ["deb http://deb.debian.org/debian trixie main contrib"]
