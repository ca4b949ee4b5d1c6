"""Every reader of a stack of layers gives the one view kiln.layers merges.

One three-layer stack holds whiteouts (over a file, a folder and a FIFO, and of a path no
layer below has), opaque folders, a file over a folder, a folder over a whiteout, devices,
FIFOs and symlinks. The merged view (path -> layer, kind, mode, owner) is asked of the
merge itself, and then of each reader: the tree view of kiln diff, the path-by-path stack
the fast drift check and the apt sources reader look up, drift's fast and deep checks
(which must agree), the layers turned to OCI form and applied as an import applies them,
and the convergence snapshot and kiln diff's entries of that flat root.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from kiln import layers
from kiln.apt.image import Layers
from kiln.machines import drift
from kiln.machines.converge import Skip, snapshot
from kiln.rootpath import Root
from kiln.store import inventory, tree
from kiln.store.apply import apply_tar
from kiln.store.inventory import Node

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="overlay whiteouts need mknod and trusted.* xattrs (root)"
)

View = dict[str, tuple[int, str, int, int, int]]  # path -> layer, kind, mode, uid, gid


def _dir(path: Path, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def _file(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chmod(path, mode)


def _node(path: Path, mode: int, device: tuple[int, int] = (0, 0)) -> None:
    os.mknod(path, mode, os.makedev(*device))
    os.chmod(path, stat.S_IMODE(mode))


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def _opaque(path: Path) -> None:
    os.setxattr(path, layers.OPAQUE_XATTR, b"y")


def stack(tmp_path: Path) -> list[Path]:
    """The three layers, bottom first, in overlay form."""
    base, middle, top = (tmp_path / name for name in ("base", "middle", "top"))
    for layer in (base, middle, top):
        _dir(layer)
    _dir(base / "etc")
    _file(base / "etc" / "motd", "hello\n")
    _dir(base / "etc" / "apt" / "sources.list.d")
    _file(base / "etc" / "apt" / "sources.list", "deb http://deb.example/ stable main\n")
    _file(base / "etc" / "apt" / "sources.list.d" / "a.list", "deb http://a.example/ x main\n")
    _file(base / "etc" / "apt" / "sources.list.d" / "b.list", "deb http://b.example/ x main\n")
    _dir(base / "srv" / "data" / "sub")
    _file(base / "srv" / "data" / "old", "old\n")
    _file(base / "srv" / "data" / "sub" / "deep", "deep\n")
    _dir(base / "opt" / "tool")
    _file(base / "opt" / "tool" / "run", "#!/bin/sh\n", 0o755)
    _dir(base / "dev")
    _node(base / "dev" / "null", stat.S_IFCHR | 0o666, (1, 3))
    _node(base / "dev" / "fifo", stat.S_IFIFO | 0o600)
    _dir(base / "usr" / "lib")
    _file(base / "usr" / "lib" / "libx.so", "elf\n")
    (base / "lib").symlink_to("usr/lib")
    _dir(base / "var" / "gone")
    _file(base / "var" / "gone" / "x", "x\n")

    _dir(middle / "etc")
    _whiteout(middle / "etc" / "motd")
    _dir(middle / "etc" / "apt" / "sources.list.d")
    _opaque(middle / "etc" / "apt" / "sources.list.d")
    _file(middle / "etc" / "apt" / "sources.list.d" / "c.list", "deb http://c.example/ x main\n")
    _dir(middle / "opt")
    _file(middle / "opt" / "tool", "a file over a folder\n")
    _dir(middle / "dev")
    _whiteout(middle / "dev" / "fifo")
    _node(middle / "dev" / "zero", stat.S_IFCHR | 0o666, (1, 5))
    _dir(middle / "var")
    _whiteout(middle / "var" / "gone")
    _dir(middle / "home" / "user", 0o700, (1000, 1000))

    _dir(top / "etc")
    _file(top / "etc" / "motd", "back again\n", 0o600)
    _dir(top / "etc" / "apt" / "sources.list.d")
    _whiteout(top / "etc" / "apt" / "sources.list.d" / "a.list")  # hidden already
    _file(top / "etc" / "apt" / "sources.list.d" / "d.list", "deb http://d.example/ x main\n")
    _dir(top / "srv" / "data")
    _opaque(top / "srv" / "data")
    _file(top / "srv" / "data" / "new", "new\n")
    _dir(top / "var" / "gone")
    _file(top / "var" / "gone" / "y", "y\n")
    _dir(top / "dev")
    _node(top / "dev" / "fifo", stat.S_IFIFO | 0o644)
    _whiteout(top / "dev" / "zero")
    _dir(top / "home" / "user", 0o700, (1000, 1000))
    (top / "home" / "user" / ".profile").symlink_to("/etc/motd")
    (top / "bin").symlink_to("usr/bin")  # to nothing
    return [base, middle, top]


EXPECTED: View = {
    "/bin": (2, "link", 0o777, 0, 0),
    "/dev": (2, "dir", 0o755, 0, 0),
    "/dev/fifo": (2, "other", stat.S_IFIFO | 0o644, 0, 0),
    "/dev/null": (0, "other", stat.S_IFCHR | 0o666, 0, 0),
    "/etc": (2, "dir", 0o755, 0, 0),
    "/etc/apt": (2, "dir", 0o755, 0, 0),
    "/etc/apt/sources.list": (0, "file", 0o644, 0, 0),
    "/etc/apt/sources.list.d": (2, "dir", 0o755, 0, 0),
    "/etc/apt/sources.list.d/c.list": (1, "file", 0o644, 0, 0),
    "/etc/apt/sources.list.d/d.list": (2, "file", 0o644, 0, 0),
    "/etc/motd": (2, "file", 0o600, 0, 0),
    "/home": (2, "dir", 0o755, 0, 0),
    "/home/user": (2, "dir", 0o700, 1000, 1000),
    "/home/user/.profile": (2, "link", 0o777, 0, 0),
    "/lib": (0, "link", 0o777, 0, 0),
    "/opt": (1, "dir", 0o755, 0, 0),
    "/opt/tool": (1, "file", 0o644, 0, 0),
    "/srv": (2, "dir", 0o755, 0, 0),
    "/srv/data": (2, "dir", 0o755, 0, 0),
    "/srv/data/new": (2, "file", 0o644, 0, 0),
    "/usr": (0, "dir", 0o755, 0, 0),
    "/usr/lib": (0, "dir", 0o755, 0, 0),
    "/usr/lib/libx.so": (0, "file", 0o644, 0, 0),
    "/var": (2, "dir", 0o755, 0, 0),
    "/var/gone": (2, "dir", 0o755, 0, 0),
    "/var/gone/y": (2, "file", 0o644, 0, 0),
}


def _described(index: int, item: Node) -> tuple[int, str, int, int, int]:
    return index, item.kind, item.mode, item.uid, item.gid


def merged(dirs: list[Path]) -> dict[str, tuple[int, Node]]:
    return layers.merge([inventory.listing(d) for d in dirs])


def test_the_merge_gives_the_overlayfs_view(tmp_path: Path) -> None:
    dirs = stack(tmp_path)
    assert {path: _described(*found) for path, found in merged(dirs).items()} == EXPECTED


def test_the_tree_view_of_kiln_diff_gives_it(tmp_path: Path) -> None:
    dirs = stack(tmp_path)
    view = tree.view(dirs)
    assert {"/" + path: dirs.index(layer) for path, layer in view.items()} == {
        path: found[0] for path, found in EXPECTED.items()
    }


def test_the_stack_looked_up_path_by_path_gives_it(tmp_path: Path) -> None:
    dirs = stack(tmp_path)
    seen: View = {}
    with layers.Stack(dirs) as lookup:

        def walk(rel_dir: str) -> None:
            for name, (index, st) in lookup.children(rel_dir).items():
                rel = f"{rel_dir}/{name}" if rel_dir else name
                seen["/" + rel] = (index, layers.kind(st), layers.mode(st), st.st_uid, st.st_gid)
                found = lookup.find(rel)
                assert found is not None and found[0] == index
                if stat.S_ISDIR(st.st_mode):
                    walk(rel)

        walk("")
        for hidden in ("etc/apt/sources.list.d/a.list", "var/gone/x", "dev/zero", "opt/tool/run"):
            assert lookup.find(hidden) is None
    assert seen == EXPECTED


def test_the_apt_reader_gives_it(tmp_path: Path) -> None:
    dirs = stack(tmp_path)
    image = Layers(dirs)
    view = merged(dirs)
    for path, (index, item) in view.items():
        rel = path[1:]
        if item.kind == "dir":
            names = sorted(p.rpartition("/")[2] for p in view if p.rpartition("/")[0] == path)
            assert image.listdir(rel) == names, path
        found = image.resolve(rel)
        if item.kind != "link":
            assert found is not None, path
            assert (found[0], found[1]) == (dirs[index], rel)
            assert (layers.kind(found[2]), layers.mode(found[2])) == (item.kind, item.mode)
            continue
        target = posixpath.normpath(posixpath.join("/" + posixpath.dirname(rel), item.target))
        there = view.get(target)
        expected = None if there is None else (dirs[there[0]], target[1:])
        assert (None if found is None else found[:2]) == expected, path
    assert image.read("etc/motd") == b"back again\n"
    assert image.read("etc/apt/sources.list.d/a.list") is None


def test_drift_fast_and_deep_checks_agree_on_what_the_top_layer_changed(tmp_path: Path) -> None:
    *lower, top = stack(tmp_path)
    skip = Skip((), ())
    with drift._Lowers(lower) as lowers:
        fast = drift._collapse(drift._fast(top, lowers, skip), [])
    listed = [inventory.listing(d, True) for d in lower]
    recorded: list[Callable[[], dict[str, Node]] | None] = [partial(dict, n) for n in listed]
    deep = drift._collapse(drift._deep(top, lower, recorded, skip), [])
    assert fast == deep
    full, below = merged([*lower, top]), merged(lower)
    assert {c.path for c in fast if c.change == drift.ADDED} == full.keys() - below.keys()
    gone = below.keys() - full.keys()
    assert {c.path for c in fast if c.change == drift.REMOVED} == {
        p for p in gone if _parent(p) not in gone
    }


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def oci_applied(tmp_path: Path) -> Path:
    """The layers turned to OCI form, tarred, and applied one on another as an import is."""
    flat = tmp_path / "flat"
    (tmp_path / "oci").mkdir()
    for index, layer in enumerate(stack(tmp_path / "oci")):
        found = layers.scan_overlay(layer)
        layers.overlay_to_oci(layer, found)
        assert layers.scan_oci(layer) == found
        tarball = tmp_path / f"layer{index}.tar"
        with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as archive:
            archive.add(layer, arcname=".")
        apply_tar(tarball, flat)
    return flat


def test_oci_form_applied_as_an_import_gives_it(tmp_path: Path) -> None:
    flat = oci_applied(tmp_path)
    applied = inventory.listing(flat)
    assert {path: (item.kind, item.mode, item.uid, item.gid) for path, item in applied.items()} == {
        path: described[1:] for path, described in EXPECTED.items()
    }


def test_the_convergence_snapshot_and_kiln_diff_entries_give_its_modes(tmp_path: Path) -> None:
    flat = oci_applied(tmp_path)
    taken = snapshot(flat, Skip((), ()))
    assert {path: (e.kind, e.mode, e.uid, e.gid) for path, (e, _key) in taken.items()} == {
        path: described[1:] for path, described in EXPECTED.items()
    }
    with Root(flat) as root:
        for path, (found, _key) in taken.items():
            assert tree.entry(root, path) == found, path
