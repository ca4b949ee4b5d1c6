"""Deletions in a layer, in the two forms kiln meets them.

overlayfs marks a deleted path in its upper dir as a character device 0:0 and an opaque
directory with the xattr ``trusted.overlay.opaque=y``. An OCI layer tar marks them with
empty files ``.wh.<name>`` and ``.wh..wh..opq``. Layers live unpacked in overlay form (so
they stack as lowerdirs); the tar is written from OCI form. The conversions run in place
and keep the parent folders' mtimes, so a converted tree tars the same as it would have.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass
class Whiteouts:
    deleted: list[str] = field(default_factory=list)  # relative paths
    opaque: list[str] = field(default_factory=list)  # relative dir paths ("" is the root)


def _is_overlay_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def scan_overlay(root: Path) -> Whiteouts:
    """Find overlay whiteouts and opaque dirs under an upper dir."""
    found = Whiteouts()
    base = str(root)
    if _is_opaque(base):
        found.opaque.append("")
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in filenames:
            full = os.path.join(dirpath, name)
            if _is_overlay_whiteout(os.lstat(full)):
                found.deleted.append(os.path.join(rel_dir, name))
        for name in dirnames:
            if _is_opaque(os.path.join(dirpath, name)):
                found.opaque.append(os.path.join(rel_dir, name))
    return found


class _KeepMtime:
    """Restore a folder's atime/mtime after we add or remove entries in it."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        st = os.lstat(folder)
        self.times = (st.st_atime_ns, st.st_mtime_ns)

    def restore(self) -> None:
        os.utime(self.folder, ns=self.times, follow_symlinks=False)


def overlay_to_oci(root: Path, found: Whiteouts) -> None:
    for rel in found.deleted:
        full = root / rel
        keep = _KeepMtime(str(full.parent))
        full.unlink()
        marker = full.parent / (WH_PREFIX + full.name)
        marker.touch(mode=0o600)
        os.utime(marker, ns=keep.times)
        keep.restore()
    for rel in found.opaque:
        folder = root / rel
        keep = _KeepMtime(str(folder))
        marker = folder / WH_OPAQUE
        marker.touch(mode=0o600)
        os.utime(marker, ns=keep.times)
        keep.restore()


def oci_to_overlay(root: Path, found: Whiteouts) -> None:
    for rel in found.deleted:
        full = root / rel
        keep = _KeepMtime(str(full.parent))
        (full.parent / (WH_PREFIX + full.name)).unlink()
        os.mknod(full, 0o000 | stat.S_IFCHR, os.makedev(0, 0))
        keep.restore()
    for rel in found.opaque:
        folder = root / rel
        keep = _KeepMtime(str(folder))
        (folder / WH_OPAQUE).unlink()
        os.setxattr(folder, OPAQUE_XATTR, b"y", follow_symlinks=False)
        keep.restore()


def scan_oci(root: Path) -> Whiteouts:
    """Find OCI whiteout marker files in an unpacked layer tar."""
    found = Whiteouts()
    base = str(root)
    for dirpath, _dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in filenames:
            if name == WH_OPAQUE:
                found.opaque.append(rel_dir)
            elif name.startswith(WH_PREFIX):
                found.deleted.append(os.path.join(rel_dir, name[len(WH_PREFIX) :]))
    return found
