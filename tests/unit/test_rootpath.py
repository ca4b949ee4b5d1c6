"""kiln.rootpath: paths inside a root resolve inside it, through the kernel or the fallback.

Every test runs twice: with openat2(RESOLVE_IN_ROOT) and with the component-by-component
walk forced. Containment tests keep a sentinel folder outside the root, reached through
symlinks planted in it, and check it is untouched afterwards.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln import rootpath
from kiln.errors import BadInput, KilnError
from kiln.rootpath import Root

Tree = dict[str, tuple[int, int, int, bytes]]


@pytest.fixture(params=["openat2", "fallback"])
def kernel(request: pytest.FixtureRequest) -> bool:
    if request.param == "openat2" and not rootpath.OPENAT2:
        pytest.skip("this kernel has no openat2")
    return bool(request.param == "openat2")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for folder in ["etc/nginx", "var", "usr/lib", "srv/site", "run"]:
        (root / folder).mkdir(parents=True)
    return root


@pytest.fixture
def root(tree: Path, kernel: bool) -> Iterator[Root]:
    with Root(tree, kernel=kernel) as opened:
        yield opened


@pytest.fixture
def sentinel(tmp_path: Path, tree: Path) -> Path:
    """A folder outside the root, with symlinks to it planted in the root."""
    folder = tmp_path / "sentinel"
    folder.mkdir()
    (folder / "keep").write_text("keep me\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep").write_text("deep\n")
    (tree / "esc").symlink_to(str(folder))
    (tree / "esc-file").symlink_to(str(folder / "keep"))
    (tree / "var" / "up").symlink_to("../../sentinel")
    return folder


def snapshot(folder: Path) -> Tree:
    out: Tree = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = os.lstat(path)
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_uid, st.st_mtime_ns, data)
    return out


def landed(root: Root, path: str) -> Path:
    """The host path ``path`` resolves to (its folder resolved, its last part as given)."""
    with root.parent(path) as (fd, name):
        return Path(os.readlink(f"/proc/self/fd/{fd}")) / name


# --- resolution ---


def test_plain_path(root: Root, tree: Path) -> None:
    assert landed(root, "/etc/nginx/nginx.conf") == tree / "etc/nginx/nginx.conf"
    assert landed(root, "etc//nginx/./x") == tree / "etc/nginx/x"
    with root.directory("/") as fd:
        assert os.fstat(fd).st_ino == os.stat(tree).st_ino
    with pytest.raises(BadInput):
        landed(root, "/")


def test_absolute_symlink_is_rerooted(root: Root, tree: Path) -> None:
    (tree / "var" / "run").symlink_to("/run")
    root.write_file("/var/run/x", b"inside")
    assert (tree / "run" / "x").read_bytes() == b"inside"
    assert landed(root, "/var/run/x") == tree / "run/x"


def test_relative_symlink_resolves_against_its_folder(root: Root, tree: Path) -> None:
    (tree / "usr" / "lib" / "site").symlink_to("../../srv/site")
    assert landed(root, "/usr/lib/site/index.html") == tree / "srv/site/index.html"


def test_chain_of_links(root: Root, tree: Path) -> None:
    (tree / "a").symlink_to("b")
    (tree / "b").symlink_to("/usr/lib")
    (tree / "usr" / "lib" / "up").symlink_to("..")
    assert landed(root, "/a/up/lib/x") == tree / "usr/lib/x"


def test_dotdot_cannot_climb_above_the_root(root: Root, tree: Path) -> None:
    assert landed(root, "/../../../etc/shadow") == tree / "etc/shadow"
    assert landed(root, "/etc/../../../../x") == tree / "x"
    with root.directory("/..") as fd:
        assert os.fstat(fd).st_ino == os.stat(tree).st_ino
    with root.directory("/etc/nginx/..") as fd:
        assert os.fstat(fd).st_ino == os.stat(tree / "etc").st_ino


def test_relative_symlink_cannot_climb_above_the_root(root: Root, tree: Path) -> None:
    (tree / "var" / "escape").symlink_to("../../../../../../etc")
    assert landed(root, "/var/escape/hostname") == tree / "etc/hostname"


def test_dotdot_after_a_symlink_goes_up_from_its_target(root: Root, tree: Path) -> None:
    (tree / "var" / "www").symlink_to("/srv/site")
    assert landed(root, "/var/www/../x") == tree / "srv/x"


def test_last_part_is_not_followed(root: Root, tree: Path) -> None:
    (tree / "etc" / "motd").symlink_to("/usr/lib/motd")
    root.write_file("/etc/motd", b"new")
    assert not (tree / "usr/lib/motd").exists()
    assert (tree / "etc/motd").read_bytes() == b"new"
    assert not (tree / "etc/motd").is_symlink()


@pytest.mark.parametrize(
    "links",
    [
        {"loop": "loop"},
        {"loop": "/loop"},
        {"loop": "ping", "ping": "/loop"},
    ],
)
def test_symlink_loop_is_a_kiln_error(root: Root, tree: Path, links: dict[str, str]) -> None:
    for name, target in links.items():
        (tree / name).symlink_to(target)
    actions: list[Callable[[], object]] = [
        lambda: root.write_file("/loop/x", b""),
        lambda: root.mkdirs("/loop/x"),
        lambda: root.read_text("/loop"),
        lambda: root.listdir("/loop"),
        lambda: root.stat("/loop"),
    ]
    for action in actions:
        with pytest.raises(BadInput, match="too many symlinks"):
            action()
    with pytest.raises(BadInput, match="too many symlinks"):
        root.remove("/loop/x")
    assert root.glob("/loop/*") == []  # a seal rule finds nothing there
    assert not root.exists("/loop/x")
    assert (tree / "loop").is_symlink()


# --- operations ---


def test_mkdirs_write_read_and_list(root: Root, tree: Path) -> None:
    root.mkdirs("/opt/app/conf")
    root.write_file("/opt/app/conf/app.ini", b"[app]\n", mode=0o640, uid=33, gid=44)
    st = os.lstat(tree / "opt/app/conf/app.ini")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 33, 44)
    assert root.read_text("/opt/app/conf/app.ini") == "[app]\n"
    assert root.listdir("/opt/app") == ["conf"]
    assert root.exists("/opt/app/conf/app.ini")
    assert not root.exists("/opt/app/missing")
    with pytest.raises(BadInput, match="larger than"):
        root.read_text("/opt/app/conf/app.ini", limit=3)


def test_write_file_streams_from_an_fd_and_replaces_a_folder(root: Root, tree: Path) -> None:
    (tree / "srv" / "site" / "index.html").mkdir()
    (tree / "srv" / "site" / "index.html" / "inner").write_text("old")
    source = tree.parent / "source"
    source.write_bytes(b"x" * 3_000_000)
    with source.open("rb") as handle:
        root.write_file("/srv/site/index.html", handle, mode=0o4755)
    st = os.lstat(tree / "srv/site/index.html")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 3_000_000
    assert stat.S_IMODE(st.st_mode) == 0o4755  # chmod after chown keeps setuid


def test_a_dangling_symlink_on_the_way_is_made_inside(root: Root, tree: Path) -> None:
    (tree / "var" / "lib").symlink_to("/srv/state/lib")
    root.mkdirs("/var/lib/app")
    assert (tree / "srv/state/lib/app").is_dir()
    assert (tree / "var" / "lib").is_symlink()


def test_mkdir_sets_owner_and_mode_and_replaces_a_file(root: Root, tree: Path) -> None:
    (tree / "srv" / "data").write_text("a file")
    root.mkdir("/srv/data", 0o1777, 5, 6)
    st = os.lstat(tree / "srv/data")
    assert stat.S_ISDIR(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o1777, 5, 6)


def test_open_file_refuses_what_is_not_a_regular_file(root: Root, tree: Path) -> None:
    os.mkfifo(tree / "run" / "fifo")
    with pytest.raises(BadInput, match="not a regular file"):
        root.read_text("/run/fifo")  # a blocking open would hang here
    with pytest.raises(BadInput, match="not a regular file"):
        root.open_file("/etc")


def test_walk_never_follows_a_symlink(root: Root, tree: Path, sentinel: Path) -> None:
    (tree / "srv" / "site" / "loop").symlink_to("/srv")
    seen = []
    for folder, _fd, entries in root.walk():
        seen += [f"{folder}/{name}" if folder else name for name in entries]
    assert "esc" in seen and "srv/site/loop" in seen
    assert not any(p.startswith(("esc/", "srv/site/loop/")) for p in seen)
    assert "keep" not in {p.rsplit("/", 1)[-1] for p in seen}


def test_walk_can_prune(root: Root) -> None:
    seen = []
    for folder, _fd, entries in root.walk():
        seen.append(folder)
        entries.pop("etc", None)
    assert "etc/nginx" not in seen and "usr/lib" in seen


def test_glob(root: Root, tree: Path) -> None:
    for name in ["var/log/apt/history.log", "var/log/dpkg.log", "var/log/.hidden", "tmp/a"]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("")
    (tree / "etc" / "ssh").mkdir()
    for name in ["ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config"]:
        (tree / "etc" / "ssh" / name).write_text("")
    assert root.glob("/etc/ssh/ssh_host_*") == [
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/ssh/ssh_host_rsa_key.pub",
    ]
    assert sorted(root.glob("/var/log/**")) == [
        "/var/log",
        "/var/log/.hidden",
        "/var/log/apt",
        "/var/log/apt/history.log",
        "/var/log/dpkg.log",
    ]
    assert root.glob("/var/**/*.log") == ["/var/log/dpkg.log", "/var/log/apt/history.log"]
    assert root.glob("/tmp/*") == ["/tmp/a"]
    assert root.glob("/nowhere/**") == []
    assert root.glob("/etc/ssh/sshd_config") == ["/etc/ssh/sshd_config"]


# --- containment: the sentinel outside the root stays as it was ---


def test_writes_through_symlinks_stay_inside(root: Root, tree: Path, sentinel: Path) -> None:
    before = snapshot(sentinel)
    root.mkdirs("/esc/new")
    root.write_file("/esc/new/file", b"x")
    root.write_file("/esc/keep", b"overwritten?")
    root.mkdirs("/var/up")
    root.write_file("/var/up/keep", b"overwritten?")
    root.write_file("/esc-file", b"replaces the link")
    root.symlink("/esc/sub", "/elsewhere")
    root.mkdir("/esc/made", 0o777)
    assert snapshot(sentinel) == before
    inside = tree / str(sentinel).lstrip("/")
    assert (inside / "new" / "file").read_bytes() == b"x"
    assert (inside / "keep").read_bytes() == b"overwritten?"
    assert (tree / "esc-file").read_bytes() == b"replaces the link"


def test_removals_through_symlinks_stay_inside(root: Root, tree: Path, sentinel: Path) -> None:
    before = snapshot(sentinel)
    (tree / "srv" / "site" / "link").symlink_to(str(sentinel))
    root.remove("/esc/keep")
    root.remove("/esc/sub")
    root.remove("/var/up/sub/deep")
    root.remove_tree("/srv")  # holds a symlink to the sentinel: the link goes, not its target
    root.remove("/esc-file")
    for pattern in ["/esc/*", "/esc/**", "/var/up/**", "/esc-file"]:
        for path in root.glob(pattern):
            root.remove(path)
    with pytest.raises(FileNotFoundError):
        root.empty("/esc")
    assert snapshot(sentinel) == before
    assert not (tree / "srv").exists()
    assert not os.path.lexists(tree / "esc-file")


def test_chmod_and_chown_never_follow(root: Root, tree: Path, sentinel: Path) -> None:
    before = snapshot(sentinel)
    with pytest.raises(BadInput, match="symlink"):
        root.chmod("/esc-file", 0o777)
    root.chown("/esc-file", 1234, 1234)
    root.chown("/esc", 1234, 1234)
    assert os.lstat(tree / "esc").st_uid == 1234
    with pytest.raises(FileNotFoundError):
        root.chmod("/esc/keep", 0o777)
    with pytest.raises(FileNotFoundError):
        root.chown("/var/up/keep", 1234, 1234)
    root.chmod("/etc", 0o700)
    assert stat.S_IMODE(os.stat(tree / "etc").st_mode) == 0o700
    assert snapshot(sentinel) == before


def test_reads_through_symlinks_stay_inside(root: Root, sentinel: Path) -> None:
    with pytest.raises(FileNotFoundError):
        root.read_text("/esc-file")
    with pytest.raises(FileNotFoundError):
        root.listdir("/esc")
    assert root.glob("/esc/*") == []
    assert not root.exists("/esc/keep", follow=True)


# --- mount points ---


@pytest.fixture
def mounted(tree: Path, tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    point = tree / "srv" / "mnt"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "kiln-test", str(point)], check=True)
    try:
        (point / "data").write_text("on another mount\n")
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_mount_points_are_not_crossed(root: Root, tree: Path, mounted: Path) -> None:
    with pytest.raises(KilnError, match="mount"):
        root.write_file("/srv/mnt/x", b"")
    with pytest.raises(KilnError, match="mount"):
        root.read_text("/srv/mnt/data")
    with pytest.raises(KilnError, match="mount point"):
        root.remove_tree("/srv")
    seen = [folder for folder, _fd, _entries in root.walk()]
    assert "srv" in seen and "srv/mnt" not in seen
    assert root.glob("/srv/**") == ["/srv", "/srv/mnt", "/srv/site"]
    assert (mounted / "data").read_text() == "on another mount\n"
    assert sorted(os.listdir(mounted)) == ["data"]


def test_the_resolver_alone_reads_inside_the_root(tree: Path, kernel: bool, sentinel: Path) -> None:
    """kiln.rootresolve resolves and reads without the tree operations Root adds on it."""
    from kiln.rootresolve import Resolver

    (tree / "etc" / "hostname").write_text("inside\n")
    (tree / "etc" / "link").symlink_to("/etc/hostname")
    with Resolver(tree, kernel=kernel) as resolver:
        assert resolver.read_text("/etc/link") == "inside\n"  # absolute: inside the root
        with pytest.raises(FileNotFoundError):
            resolver.listdir("/esc")  # the sentinel's path, looked for inside the root
        assert repr(resolver) == f"Resolver({str(tree)!r})"
    with Root(tree, kernel=kernel) as root:
        assert isinstance(root, Resolver) and repr(root) == f"Root({str(tree)!r})"
