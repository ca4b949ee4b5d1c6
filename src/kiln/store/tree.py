"""The merged file tree of an image, read from its unpacked layers, and diffs between two.

A view maps each path to the layer folder that provides it, applying whiteouts and opaque
folders the way overlayfs does; layers are read through kiln.rootpath. Two images that
share a layer share its entries, so a diff only reads (and hashes) files that come from
different layers.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.digests import CHUNK
from kiln.rootpath import Root
from kiln.store.whiteout import is_opaque


def view(layer_dirs: Sequence[Path]) -> dict[str, Path]:
    """path (relative, no leading ./) -> the layer folder whose entry is visible."""
    merged: dict[str, Path] = {}
    dirs: set[str] = set()
    for layer in layer_dirs:
        covers: set[str] = set()  # folders of this layer over a lower layer's folder
        with Root(layer) as root:
            for rel_dir, fd, entries in root.walk():
                if rel_dir in covers and is_opaque(fd):  # hides everything below it
                    _drop_below(merged, dirs, rel_dir)
                    dirs.add(rel_dir)
                for name, st in entries.items():
                    rel = os.path.join(rel_dir, name)
                    was_dir = rel in dirs
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # whiteout
                        merged.pop(rel, None)
                        if was_dir:
                            _drop_below(merged, dirs, rel)
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if was_dir and not is_dir:
                        _drop_below(merged, dirs, rel)
                    elif was_dir:
                        covers.add(rel)
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


def entry(root: Root, rel: str) -> Entry:
    st = root.lstat(rel)
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", mode, uid, gid, root.readlink(rel))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", mode, uid, gid, "")
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with os.fdopen(root.open_file(rel, follow=False), "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return Entry("file", mode, uid, gid, digest.hexdigest())
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
    roots: dict[Path, Root] = {}

    def entry_in(layer: Path, rel: str) -> Entry:
        if layer not in roots:
            roots[layer] = Root(layer)
        return entry(roots[layer], rel)

    for rel in sorted(new.keys() - old.keys()):
        result.added.append("/" + rel)
    for rel in sorted(old.keys() - new.keys()):
        result.deleted.append("/" + rel)
    try:
        for rel in sorted(old.keys() & new.keys()):
            if old[rel] == new[rel]:
                continue  # the same layer provides both
            if entry_in(old[rel], rel) != entry_in(new[rel], rel):
                result.modified.append("/" + rel)
    finally:
        for root in roots.values():
            root.close()
    return result
