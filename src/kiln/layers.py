"""The overlay rules: what a layer's whiteouts and opaque folders are, and what a stack shows.

A layer deletes a path of the layers below it with a whiteout and hides a folder's lower
contents with an opaque mark, in one of two forms. overlayfs (the form kiln keeps layers
unpacked in, so they stack as lowerdirs) marks a deleted path as a character device 0:0
and an opaque folder with the xattr ``trusted.overlay.opaque=y``. An OCI layer tar marks
them with empty files ``.wh.<name>`` and ``.wh..wh..opq``; a tar is written from OCI form.

The view of a stack (bottom first, as ``lowerdir`` is given top first) is what overlayfs
shows: a whiteout removes a path and all below it, an opaque folder or a non-folder over a
folder hides what the layers below held under it, and each path comes from the topmost
layer that has it. :func:`merge` answers it for whole listings, :class:`Stack` path by path
from the unpacked folders (for readers that look at a few paths of a large image).

Everything is read and converted through kiln.rootpath (a tree may hold any symlink a
build step planted); the conversions run in place and keep the parent folders' mtimes, so
a converted tree tars the same as it would have.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, TypeVar

from kiln.errors import KilnError
from kiln.rootpath import DIR, Root

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

FILE, DIRECTORY, LINK, WHITEOUT, OTHER = "file", "dir", "link", "whiteout", "other"
OPAQUE = "opaque"


# --- what one entry is ---


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an entry of an unpacked layer is overlayfs' deletion mark (a char device 0:0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(fd: int) -> bool:
    """Whether the folder open as ``fd`` carries overlayfs' opaque mark."""
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def kind(st: os.stat_result) -> str:
    """file | dir | link | whiteout | other (a device, FIFO or socket), from an lstat."""
    if stat.S_ISREG(st.st_mode):
        return FILE
    if stat.S_ISDIR(st.st_mode):
        return DIRECTORY
    if stat.S_ISLNK(st.st_mode):
        return LINK
    return WHITEOUT if is_whiteout(st) else OTHER


def mode(st: os.stat_result) -> int:
    """The mode recorded for an entry: the permission bits of a file, folder or link, the
    whole st_mode of a special file. A FIFO, a socket and a device of one permission are
    different things, and a socket is told by its type bits (tar leaves sockets out)."""
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return st.st_mode


def oci_marker(name: str) -> tuple[str, str] | None:
    """What an OCI marker file named ``name`` says: (OPAQUE, "") for ``.wh..wh..opq``,
    (WHITEOUT, the name it deletes) for ``.wh.NAME``, None when it is no marker."""
    if name == WH_OPAQUE:
        return OPAQUE, ""
    if name.startswith(WH_PREFIX):
        return WHITEOUT, name[len(WH_PREFIX) :]
    return None


# --- the two forms and the conversions between them ---


@dataclass
class Whiteouts:
    deleted: list[str] = field(default_factory=list)  # relative paths
    opaque: list[str] = field(default_factory=list)  # relative dir paths ("" is the root)


def scan_overlay(tree: Path) -> Whiteouts:
    """Find overlay whiteouts and opaque dirs under an upper dir."""
    found = Whiteouts()
    with Root(tree) as root:
        for rel_dir, fd, entries in root.walk():
            if is_opaque(fd):
                found.opaque.append(rel_dir)
            for name, st in entries.items():
                if is_whiteout(st):
                    found.deleted.append(os.path.join(rel_dir, name))
    return found


def scan_oci(tree: Path) -> Whiteouts:
    """Find OCI whiteout marker files in an unpacked layer tar."""
    found = Whiteouts()
    with Root(tree) as root:
        for rel_dir, _fd, entries in root.walk():
            for name, st in entries.items():
                marker = None if stat.S_ISDIR(st.st_mode) else oci_marker(name)
                if marker is None:
                    continue
                if marker[0] == WHITEOUT:
                    found.deleted.append(os.path.join(rel_dir, marker[1]))
                else:
                    found.opaque.append(rel_dir)
    return found


def _touch(fd: int, name: str, times: tuple[int, int]) -> None:
    marker = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
    try:
        os.utime(marker, ns=times)
    finally:
        os.close(marker)


def _times(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_atime_ns, st.st_mtime_ns


def overlay_to_oci(tree: Path, found: Whiteouts) -> None:
    with Root(tree) as root:
        for rel in found.deleted:
            with root.parent(rel) as (fd, name):
                times = _times(fd)
                os.unlink(name, dir_fd=fd)
                _touch(fd, WH_PREFIX + name, times)
                os.utime(fd, ns=times)
        for rel in found.opaque:
            with root.directory(rel or "/") as fd:
                times = _times(fd)
                _touch(fd, WH_OPAQUE, times)
                os.utime(fd, ns=times)


def oci_to_overlay(tree: Path, found: Whiteouts) -> None:
    with Root(tree) as root:
        for rel in found.deleted:
            with root.parent(rel) as (fd, name):
                times = _times(fd)
                os.unlink(WH_PREFIX + name, dir_fd=fd)
                os.mknod(name, 0o000 | stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
                os.utime(fd, ns=times)
        for rel in found.opaque:
            with root.directory(rel or "/") as fd:
                times = _times(fd)
                os.unlink(WH_OPAQUE, dir_fd=fd)
                os.setxattr(fd, OPAQUE_XATTR, b"y")
                os.utime(fd, ns=times)


# --- the view of a stack ---


class Listed(Protocol):
    """An entry of a layer's listing, as :func:`merge` reads it."""

    @property
    def kind(self) -> str: ...

    @property
    def opaque(self) -> bool: ...


N = TypeVar("N", bound=Listed)


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def merge(layers: Sequence[Mapping[str, N]]) -> dict[str, tuple[int, N]]:
    """The view overlayfs gives of ``layers`` (bottom first, each listed parents first, its
    paths as '/a/b'): path -> (index of the layer that provides it, its entry). A whiteout
    removes a path and everything below it; an opaque folder, or a non-folder over a folder,
    hides what the layers below held under it."""
    merged: dict[str, tuple[int, N]] = {}
    children: dict[str, set[str]] = {}

    def drop_below(path: str) -> None:
        for child in children.pop(path, set()):
            merged.pop(child, None)
            drop_below(child)

    for index, nodes in enumerate(layers):
        for path, item in nodes.items():
            old = merged.get(path)
            if item.kind == WHITEOUT:
                if old is not None:
                    del merged[path]
                    children.get(_parent(path), set()).discard(path)
                    drop_below(path)
                continue
            if (
                old is not None
                and old[1].kind == DIRECTORY
                and (item.kind != DIRECTORY or item.opaque)
            ):
                drop_below(path)
            merged[path] = (index, item)
            children.setdefault(_parent(path), set()).add(path)
    return merged


class Stack:
    """Unpacked layers (bottom first), looked up path by path the way overlayfs stacks them.

    Paths are relative ('a/b', '' the root). Which layers a folder is a real folder in is
    worked out once per folder, from its parent's answer; no symlink is ever followed to get
    there. Layer numbers are indexes into ``dirs``."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)
        self.roots = [Root(d) for d in self.dirs]
        self._stacks: dict[str, list[int]] = {"": list(reversed(range(len(self.roots))))}

    def close(self) -> None:
        for root in self.roots:
            root.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self, index: int, rel: str) -> os.stat_result | None:
        """What layer ``index`` holds at ``rel`` (not followed), None when it holds nothing."""
        try:
            return self.roots[index].lstat(rel)
        except (FileNotFoundError, NotADirectoryError, KilnError):
            return None

    def _opaque(self, index: int, rel: str) -> bool:
        try:
            fd = self.roots[index].open(rel, DIR, follow=False)
        except (OSError, KilnError):
            return False
        try:
            return is_opaque(fd)
        finally:
            os.close(fd)

    def stack(self, rel_dir: str) -> list[int]:
        """The layers (top first) whose folder ``rel_dir`` shows in the merged view."""
        found = self._stacks.get(rel_dir)
        if found is not None:
            return found
        parent = rel_dir.rpartition("/")[0]
        found = []
        for index in self.stack(parent):
            st = self.lstat(index, rel_dir)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a file or whiteout here hides the layers below
            found.append(index)
            if self._opaque(index, rel_dir):
                break
        self._stacks[rel_dir] = found
        return found

    def find(self, rel: str) -> tuple[int, os.stat_result] | None:
        """The layer that shows ``rel`` and its lstat, or None when the view has no ``rel``."""
        for index in self.stack(rel.rpartition("/")[0]):
            st = self.lstat(index, rel)
            if st is None:
                continue
            return None if is_whiteout(st) else (index, st)
        return None

    def children(self, rel_dir: str) -> dict[str, tuple[int, os.stat_result]]:
        """What the view shows inside the folder ``rel_dir``: name -> (layer, lstat)."""
        out: dict[str, tuple[int, os.stat_result]] = {}
        hidden: set[str] = set()
        for index in self.stack(rel_dir):
            with self.roots[index].directory(rel_dir or "/") as fd:
                for name in os.listdir(fd):
                    if name in out or name in hidden:
                        continue
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if is_whiteout(st):
                        hidden.add(name)
                    else:
                        out[name] = (index, st)
        return out
