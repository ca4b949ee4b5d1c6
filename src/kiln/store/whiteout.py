"""Deletions in a layer, in the two forms kiln meets them.

overlayfs marks a deleted path in its upper dir as a character device 0:0 and an opaque
directory with the xattr ``trusted.overlay.opaque=y``. An OCI layer tar marks them with
empty files ``.wh.<name>`` and ``.wh..wh..opq``. Layers live unpacked in overlay form (so
they stack as lowerdirs); the tar is written from OCI form. The conversions run in place,
through kiln.rootpath (a tree may hold any symlink a build step planted), and keep the
parent folders' mtimes, so a converted tree tars the same as it would have.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kiln.rootpath import Root

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass
class Whiteouts:
    deleted: list[str] = field(default_factory=list)  # relative paths
    opaque: list[str] = field(default_factory=list)  # relative dir paths ("" is the root)


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(fd: int) -> bool:
    """Whether the folder open as ``fd`` carries overlayfs' opaque mark."""
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def scan_overlay(tree: Path) -> Whiteouts:
    """Find overlay whiteouts and opaque dirs under an upper dir."""
    found = Whiteouts()
    with Root(tree) as root:
        for rel_dir, fd, entries in root.walk():
            if is_opaque(fd):
                found.opaque.append(rel_dir)
            for name, st in entries.items():
                if _is_overlay_whiteout(st):
                    found.deleted.append(os.path.join(rel_dir, name))
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


def scan_oci(tree: Path) -> Whiteouts:
    """Find OCI whiteout marker files in an unpacked layer tar."""
    found = Whiteouts()
    with Root(tree) as root:
        for rel_dir, _fd, entries in root.walk():
            for name, st in entries.items():
                if stat.S_ISDIR(st.st_mode):
                    continue
                if name == WH_OPAQUE:
                    found.opaque.append(rel_dir)
                elif name.startswith(WH_PREFIX):
                    found.deleted.append(os.path.join(rel_dir, name[len(WH_PREFIX) :]))
    return found
