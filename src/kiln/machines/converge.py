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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from kiln.rootpath import Root
from kiln.store.tree import Entry, entry_at
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
        return self._globs is not None and self._globs.match(path) is not None

    @cached_property
    def _globs(self) -> re.Pattern[str] | None:
        """The patterns as one expression: a walk asks about every path it meets, and one
        match costs what a single fnmatch does (fnmatchcase's rules: ``*`` crosses '/')."""
        if not self.patterns:
            return None
        return re.compile("|".join(fnmatch.translate(pattern) for pattern in self.patterns))


def _entry(fd: int, name: str, st: os.stat_result, previous: tuple[Entry, StatKey] | None) -> Entry:
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    content = None
    if previous is not None and previous[1] == key and previous[0].kind == "file":
        content = previous[0].content
    return entry_at(fd, name, st, content)


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
