"""The merged file tree of an image, read from its unpacked layers, and diffs between two.

A view maps each path to the layer folder that provides it, as kiln.layers merges a stack
the way overlayfs does; layers are read through kiln.rootpath. Two images that
share a layer share its entries, so a diff only reads (and hashes) files that come from
different layers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.layers import DIRECTORY, FILE, LINK, OTHER, kind, merge
from kiln.layers import mode as entry_mode
from kiln.rootpath import Root
from kiln.store.inventory import file_sha256, listing


def view(layer_dirs: Sequence[Path]) -> dict[str, Path]:
    """path (relative, no leading ./) -> the layer folder whose entry is visible."""
    merged = merge([listing(layer) for layer in layer_dirs])
    return {path[1:]: layer_dirs[index] for path, (index, _node) in merged.items()}


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


def entry_at(fd: int, name: str, st: os.stat_result, content: str | None = None) -> Entry:
    """The Entry of ``name`` in folder ``fd`` from its lstat; a regular file is hashed (never
    followed) unless its ``content`` is known. A whiteout is a special file here."""
    what, mode, uid, gid = kind(st), entry_mode(st), st.st_uid, st.st_gid
    if what == LINK:
        return Entry(what, mode, uid, gid, os.readlink(name, dir_fd=fd))
    if what == DIRECTORY:
        return Entry(what, mode, uid, gid, "")
    if what == FILE:
        return Entry(what, mode, uid, gid, file_sha256(fd, name) if content is None else content)
    return Entry(OTHER, mode, uid, gid, str(st.st_rdev))


def entry(root: Root, rel: str) -> Entry:
    with root.parent(rel) as (fd, name):
        return entry_at(fd, name, os.stat(name, dir_fd=fd, follow_symlinks=False))


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
