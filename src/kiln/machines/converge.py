"""Snapshots of a machine's files, and what changed between two of them.

A snapshot is taken of the machine's root as the machine sees it (its overlay mount), so
a file rewritten with the same content, owner and mode is no change, and a folder
replaced wholesale shows each file it lost. What is expected to change while a machine
runs is left out: declared state, kernel and runtime file systems, logs, caches, temp
files, and whatever the seal removes from images for the same reason.

The second snapshot re-hashes only files whose inode, size, mtime or ctime moved.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.digests import file_sha256_of
from kiln.rootpath import Root
from kiln.store.tree import Entry
from kiln.volatile import RULES

VOLATILE = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/lib/systemd",
    "/var/lib/apt/lists",
    "/var/lib/cloud",
    "/root/.ansible",
)


StatKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
Snapshot = dict[str, tuple[Entry, StatKey]]


@dataclass(frozen=True)
class Skip:
    prefixes: tuple[str, ...]
    patterns: tuple[str, ...]

    @classmethod
    def for_machine(cls, state: Sequence[str], seal_paths: Sequence[str] = ()) -> Skip:
        globs = [rule.pattern for rule in RULES] + list(seal_paths)
        prefixes = [p.rstrip("/") for p in (*VOLATILE, *state)]
        return cls(tuple(prefixes), tuple(globs))

    def __call__(self, path: str) -> bool:
        for prefix in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return True
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in self.patterns)


def _content(fd: int, name: str) -> str:
    """sha256 of the regular file ``name`` in folder ``fd``, opened without following it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    file = os.open(name, flags, dir_fd=fd)
    with os.fdopen(file, "rb") as handle:
        if not stat.S_ISREG(os.fstat(file).st_mode):
            return "not a regular file any more"  # swapped while we looked: a change
        return file_sha256_of(handle)


def _entry(fd: int, name: str, st: os.stat_result, previous: tuple[Entry, StatKey] | None) -> Entry:
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", mode, uid, gid, os.readlink(name, dir_fd=fd))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", mode, uid, gid, "")
    if stat.S_ISREG(st.st_mode):
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if previous is not None and previous[1] == key and previous[0].kind == "file":
            content = previous[0].content
        else:
            content = _content(fd, name)
        return Entry("file", mode, uid, gid, content)
    return Entry("other", st.st_mode, uid, gid, str(st.st_rdev))


def snapshot(root: Path, skip: Skip, previous: Snapshot | None = None) -> Snapshot:
    """Every path under ``root`` (as '/etc/x') that ``skip`` keeps, with what it is.

    The walk goes through folder descriptors inside the root and never follows a symlink,
    so a machine that swaps a folder for a link while we look cannot lead it elsewhere.
    """
    out: Snapshot = {}
    with Root(root) as tree:
        for rel_dir, fd, entries in tree.walk():
            for name, st in list(entries.items()):
                rel = f"/{rel_dir}/{name}" if rel_dir else f"/{name}"
                if skip(rel):
                    del entries[name]  # not entered either
                    continue
                key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                try:
                    found = _entry(fd, name, st, previous.get(rel) if previous else None)
                except FileNotFoundError:
                    continue  # removed while we walked
                out[rel] = (found, key)
    return out


@dataclass(frozen=True)
class Change:
    path: str
    change: str  # added | modified | deleted
    before: str = ""
    after: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "before": self.before,
            "after": self.after,
        }

    def __str__(self) -> str:
        sign = {"added": "+", "modified": "~", "deleted": "-"}[self.change]
        detail = f" ({self.before} -> {self.after})" if self.before and self.after else ""
        return f"{sign} {self.path}{detail}"


def _what(before: Entry, after: Entry) -> tuple[str, str]:
    if before.kind != after.kind:
        return before.kind, after.kind
    if before.content != after.content:
        what = "content" if before.kind == "file" else "target"
        return f"{what} {before.content[:12]}", f"{what} {after.content[:12]}"
    return before.describe(), after.describe()


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    changes = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old is None and new is not None:
            changes.append(Change(path, "added", after=new[0].describe()))
        elif new is None and old is not None:
            changes.append(Change(path, "deleted", before=old[0].describe()))
        elif old is not None and new is not None and old[0] != new[0]:
            changes.append(Change(path, "modified", *_what(old[0], new[0])))
    return changes
