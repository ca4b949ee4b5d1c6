"""A rebake that changes nothing, answered without loading the recipe models.

A bake validates each recipe (pydantic) and computes its cache key from it; importing
the models alone costs more than the rest of a cache hit. So every bake also leaves a
memo, under ``cache/recipes/``, of what the validated recipe gives its key: the
normalised recipe, kiln's versions, the files the recipe reads, how its parent is named,
its lock's parent. A memo is found by the recipe's path and bytes, its lock's bytes and
kiln's own code, so it never outlives any of them.

The next bake of the same bytes recomputes everything that can change while they stay
the same: the parent's digest (from the catalog), the lock's digest, each input file's
digest, the host's apt sources. It then asks the catalog for that key. Anything short of
a hit for every recipe (no memo, a new key, a stale lock, a file gone, a parent the
catalog does not know) leaves the whole bake to the full path (kiln.bake.pipeline), which
validates, reports and builds as always. Both paths build the key document with one
function (kiln.bake.keydoc), so they cannot disagree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import kiln
from kiln import refs
from kiln.atomic import write_atomic
from kiln.bake import again, keydoc
from kiln.bake.result import BakeResult
from kiln.catalog.lookup import Lookup
from kiln.digests import canonical_json, file_sha256, input_digest, json_sha256
from kiln.errors import KilnError
from kiln.home import Home
from kiln.recipe import limits
from kiln.store.layout import Layout

VERSION = 1  # of the memo's own format


class Reads(Protocol):
    @property
    def home(self) -> Home: ...
    @property
    def layout(self) -> Layout: ...
    @property
    def lookup(self) -> Lookup: ...


@functools.cache
def fingerprint() -> str:
    """kiln's own code, as sizes and change times of its modules (and pydantic's, whose
    normalising of a recipe is part of the key): a new kiln never reads an old memo."""
    package = Path(kiln.__file__).parent
    entries: list[list[object]] = [[kiln.__version__, VERSION]]

    def walk(folder: Path) -> Iterator[os.DirEntry[str]]:
        with os.scandir(folder) as found:
            for entry in found:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    yield from walk(Path(entry.path))
                elif entry.name.endswith(".py"):
                    yield entry

    for entry in walk(package):
        st = entry.stat()
        entries.append([entry.path, st.st_size, st.st_mtime_ns])
    import importlib.util

    spec = importlib.util.find_spec("pydantic")
    if spec is not None and spec.origin is not None:
        version = Path(spec.origin).with_name("version.py")
        st = version.stat()
        entries.append([str(version), st.st_size, st.st_mtime_ns])
    entries.sort(key=str)
    return json_sha256(entries)


def _lock_path(recipe: Path) -> Path:
    return recipe.with_name(recipe.name + ".lock")


def _memo_path(home: Home, recipe: Path, recipe_digest: str, lock_digest: str | None) -> Path:
    key = json_sha256([fingerprint(), str(recipe), recipe_digest, lock_digest])
    return home.root / "cache" / "recipes" / f"{key}.json"


def _lock_bytes(recipe: Path) -> bytes | None:
    lock = _lock_path(recipe)
    if not os.path.lexists(lock):
        return None
    return limits.read_regular(lock, limits.MAX_LOCK_BYTES, "lock file")


@dataclass(frozen=True)
class Entry:
    """A memo: what a validated recipe gives its cache key."""

    path: Path
    name: str
    parent: str | None  # as the recipe names it
    parent_path: Path | None  # when it names a recipe file
    document: dict[str, Any]  # the key's parts that only the recipe's bytes decide
    materials: list[tuple[str, str, str, tuple[str, ...]]]  # key, source, kind, skipped
    lock_parent: str | None  # the parent digest the lock was made against
    uses_lock: bool
    sources: tuple[str, str | None, tuple[str, ...]] | None  # suite, mirror, components

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "path": str(self.path),
            "name": self.name,
            "parent": self.parent,
            "parent_path": str(self.parent_path) if self.parent_path else None,
            "document": self.document,
            "materials": [
                [key, source, kind, list(skip)] for key, source, kind, skip in self.materials
            ],
            "lock_parent": self.lock_parent,
            "uses_lock": self.uses_lock,
            "sources": [*self.sources[:2], list(self.sources[2])] if self.sources else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        sources = data["sources"]
        return cls(
            path=Path(data["path"]),
            name=data["name"],
            parent=data["parent"],
            parent_path=Path(data["parent_path"]) if data["parent_path"] else None,
            document=data["document"],
            materials=[(k, s, kind, tuple(skip)) for k, s, kind, skip in data["materials"]],
            lock_parent=data["lock_parent"],
            uses_lock=data["uses_lock"],
            sources=(sources[0], sources[1], tuple(sources[2])) if sources else None,
        )


def remember(home: Home, recipe_digest: str, lock_digest: str | None, entry: Entry) -> None:
    """Leave the memo of a recipe whose key the full path just computed. A memo only
    saves time: one that cannot be written (a full disk) is left out, and the bake goes
    on to meet the disk itself."""
    try:
        path = _memo_path(home, entry.path, recipe_digest, lock_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, canonical_json(entry.to_json()))
    except (OSError, KilnError):
        return


def _recall(home: Home, recipe: Path) -> Entry | None:
    data = limits.read_regular(recipe, limits.MAX_RECIPE_BYTES, "recipe")
    lock = _lock_bytes(recipe)
    lock_digest = hashlib.sha256(lock).hexdigest() if lock is not None else None
    memo = _memo_path(home, recipe, hashlib.sha256(data).hexdigest(), lock_digest)
    if not memo.is_file():
        return None
    entry = Entry.from_json(json.loads(memo.read_bytes()))
    return entry if entry.path == recipe and entry.uses_lock == (lock is not None) else None


def _ordered(entries: dict[Path, Entry]) -> list[Entry] | None:
    """kiln.bake.plan's order, from the memos: parents first, then by path."""
    by_name: dict[str, list[Entry]] = {}
    for entry in entries.values():
        by_name.setdefault(entry.name, []).append(entry)

    def parent_of(entry: Entry) -> Entry | None:
        if entry.parent_path is not None:
            return entries[entry.parent_path]
        named = entry.parent is not None and refs.is_ref(entry.parent)
        if named and refs.parse(entry.parent or "").newest:
            candidates = by_name.get(entry.parent or "", [])
            return candidates[0] if len(candidates) == 1 else None
        return None

    ordered: list[Entry] = []
    state: dict[Path, str] = {}

    def visit(entry: Entry) -> bool:
        mark = state.get(entry.path)
        if mark == "visiting":
            return False  # a cycle: the full path reports it
        if mark == "done":
            return True
        state[entry.path] = "visiting"
        parent = parent_of(entry)
        if parent is not None and not visit(parent):
            return False
        state[entry.path] = "done"
        ordered.append(entry)
        return True

    for entry in sorted(entries.values(), key=lambda e: str(e.path)):
        if not visit(entry):
            return None
    return ordered


def _key(entry: Entry, parent_digest: str | None, mirror: str | None) -> str | None:
    if entry.uses_lock and entry.lock_parent != parent_digest:
        return None  # the lock is stale now: the full path says so
    return keydoc.key_of(
        keydoc.document(
            kiln=entry.document["kiln"],
            recipe=entry.document["recipe"],
            parent=parent_digest,
            inputs={
                key: input_digest(kind, Path(source), skip)
                for key, source, kind, skip in entry.materials
            },
            lock=file_sha256(_lock_path(entry.path)) if entry.uses_lock else None,
            sources=keydoc.image_sources(*entry.sources, mirror) if entry.sources else None,
        )
    )


def cached(
    reads: Reads, paths: list[Path], mirror: str | None, clock: Callable[[], float] = time.monotonic
) -> list[BakeResult] | None:
    """The results of baking ``paths`` if every recipe is a cache hit, else None."""
    try:
        return _cached(reads, paths, mirror, clock)
    except (OSError, ValueError, KeyError, TypeError, KilnError):
        return None  # whatever it is, the full path meets it again and reports it


def _cached(
    reads: Reads, paths: list[Path], mirror: str | None, clock: Callable[[], float]
) -> list[BakeResult] | None:
    entries: dict[Path, Entry] = {}
    pending = [Path(os.path.realpath(p)) for p in paths]
    while pending:  # the recipes named, with their recipe-path ancestors
        path = pending.pop()
        if path in entries:
            continue
        entry = _recall(reads.home, path)
        if entry is None:
            return None
        entries[path] = entry
        if entry.parent_path is not None:
            pending.append(entry.parent_path)
    ordered = _ordered(entries)
    if ordered is None:
        return None
    results: list[BakeResult] = []
    made: dict[Path, BakeResult] = {}
    names: dict[str, BakeResult] = {}
    for entry in ordered:
        started = clock()
        parent_digest: str | None = None
        if entry.parent_path is not None:
            parent_digest = made[entry.parent_path].digest
        elif entry.parent is not None and entry.parent in names:
            parent_digest = names[entry.parent].digest
        elif entry.parent is not None:
            parent_digest = reads.lookup.image(refs.parse(entry.parent)).digest
        key = _key(entry, parent_digest, mirror)
        hit = reads.lookup.by_cache_key(key) if key is not None else None
        if key is None or hit is None or not reads.layout.has_blob(hit.digest):
            return None
        if again.current(reads.lookup, hit) is None:
            return None  # an older version's bytes: the full path makes them the newest
        result = again.result(hit, key, str(entry.path), clock() - started, cached=True)
        made[entry.path] = names[entry.name] = result
        results.append(result)
    return results
