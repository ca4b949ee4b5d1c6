"""The merged file tree of an image, read from its unpacked layers, and diffs between two.

A view maps each path to the layer folder that provides it, applying whiteouts and opaque
folders the way overlayfs does. Two images that share a layer share its entries, so a
diff only reads (and hashes) files that come from different layers.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.digests import file_sha256
from kiln.store.whiteout import OPAQUE_XATTR


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def view(layer_dirs: Sequence[Path]) -> dict[str, Path]:
    """path (relative, no leading ./) -> the layer folder whose entry is visible."""
    merged: dict[str, Path] = {}
    dirs: set[str] = set()
    for layer in layer_dirs:
        base = str(layer)
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, base)
            rel_dir = "" if rel_dir == "." else rel_dir
            for name in dirnames + filenames:
                rel = os.path.join(rel_dir, name)
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                was_dir = rel in dirs
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # whiteout
                    merged.pop(rel, None)
                    if was_dir:
                        _drop_below(merged, dirs, rel)
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if was_dir and (not is_dir or _opaque(full)):
                    _drop_below(merged, dirs, rel)
                merged[rel] = layer
                if is_dir:
                    dirs.add(rel)
    return merged


def _drop_below(merged: dict[str, Path], dirs: set[str], rel: str) -> None:
    prefix = rel + "/"
    for key in [k for k in merged if k.startswith(prefix)]:
        del merged[key]
        dirs.discard(key)
    dirs.discard(rel)


@dataclass(frozen=True)
class Entry:
    """What a path is, for comparing two trees (kiln diff, the convergence check)."""

    kind: str  # file | dir | link | other
    mode: int
    uid: int
    gid: int
    content: str  # sha256 of a file, target of a link, device number of the rest

    def describe(self) -> str:
        return f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}"


def entry(path: Path) -> Entry:
    st = os.lstat(path)
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", mode, uid, gid, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", mode, uid, gid, "")
    if stat.S_ISREG(st.st_mode):
        return Entry("file", mode, uid, gid, file_sha256(path))
    return Entry("other", mode, uid, gid, str(st.st_rdev))


@dataclass
class TreeDiff:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.added or self.modified or self.deleted)


def diff(old_layers: Sequence[Path], new_layers: Sequence[Path]) -> TreeDiff:
    """Files added, modified (content, type, mode, owner or link target) and deleted."""
    old, new = view(old_layers), view(new_layers)
    result = TreeDiff()
    for rel in sorted(new.keys() - old.keys()):
        result.added.append("/" + rel)
    for rel in sorted(old.keys() - new.keys()):
        result.deleted.append("/" + rel)
    for rel in sorted(old.keys() & new.keys()):
        if old[rel] == new[rel]:
            continue  # the same layer provides both
        if entry(old[rel] / rel) != entry(new[rel] / rel):
            result.modified.append("/" + rel)
    return result
