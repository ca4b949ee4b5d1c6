"""Drift: what a machine added, changed and deleted against its image (``kiln drift``).

A machine writes only to its overlay upper dir (``machines/<name>/upper``), so that folder
is all the fast check reads: each entry there is a path the machine added or touched, a
character device 0:0 is a deletion and a folder marked opaque hides what the image held
below it. A touched path is compared with what the image's unpacked layers show at that
path (top layer first, as overlayfs resolves it): a copy-up whose content, type, mode and
owner equal the image's is no drift. What is expected to change is left out: the image's
state paths and the machine's volumes, and the volatile paths the convergence check skips
(machines/converge.py), with the seal's own paths from the image's labels. Content changes
(a file's bytes, a link's target, a path's type) are told apart from metadata-only ones
(mode, owner).

The deep check (``--deep``) re-hashes every file of the machine's merged view and compares
it with the file inventories recorded when the image's layers were baked
(kiln.store.inventory): it also sees a layer edited under ``$KILN_HOME/layers/`` behind the
overlay's back. A layer without an inventory (baked before kiln recorded them) is taken as
it is on disk, and the result says so.

Everything is read through kiln.rootpath: a link the machine planted is reported, never
followed.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, StoreError
from kiln.home import Home
from kiln.layers import FILE, Stack, is_opaque, is_whiteout, merge
from kiln.machines import nspawn, process, treehash
from kiln.machines.contract import from_config
from kiln.machines.converge import Skip
from kiln.machines.folder import Folder, State, load
from kiln.rootpath import Root
from kiln.store import inventory
from kiln.store.inventory import Node
from kiln.store.layout import Layout

# Written by every machine as it boots; not drift. (/etc/machine-id is emptied by the seal,
# so its checks in the image's labels name it too; an imported image may have none.)
BOOT_PATHS = (
    "/etc/machine-id",  # machine identity, made at first boot
    "/etc/.pwd.lock",  # the lock taken on /etc/passwd by shadow's and systemd's user tools
)
# A network member's /etc/hosts is kiln's hosts file bind-mounted over the image's: the
# upper dir holds only its mount point.
NETWORK_PATHS = (nspawn.HOSTS_TARGET,)
SEAL_LABEL = "org.kiln.seal"

ADDED, CHANGED, REMOVED, METADATA = "added", "changed", "deleted", "metadata"
SIGNS = {ADDED: "+", CHANGED: "~", REMOVED: "-", METADATA: "m"}


@dataclass(frozen=True)
class Change:
    path: str  # inside the machine, '/etc/x'
    change: str  # added | changed | deleted (content) | metadata (mode, owner only)
    kind: str  # what the path is on the machine (what it was, when deleted)
    detail: str = ""  # 'content', 'type file -> link', 'mode 0644 -> 0600', ...
    layer: int | None = None  # deep: the image layer whose folder changed on disk

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "kind": self.kind,
            "detail": self.detail,
            "layer": self.layer,
        }

    def __str__(self) -> str:
        where = f"  (in layer {self.layer}, behind the overlay)" if self.layer is not None else ""
        detail = f"  {self.detail}" if self.detail else ""
        return f"{SIGNS[self.change]} {self.path}{detail}{where}"


@dataclass(frozen=True)
class LayerCheck:
    """One image layer as the deep check saw it."""

    index: int
    diff_id: str
    inventory: bool  # False: baked before kiln recorded inventories; taken as it is on disk

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "diff_id": self.diff_id, "inventory": self.inventory}


@dataclass
class Drift:
    name: str
    image: str
    digest: str
    running: bool
    changes: list[Change] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # the state paths left out
    deep: list[LayerCheck] | None = None  # None: the fast check only
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """The number of drifted paths (content and metadata)."""
        return len(self.changes)

    @property
    def content(self) -> list[Change]:
        return [c for c in self.changes if c.change != METADATA]

    @property
    def metadata(self) -> list[Change]:
        return [c for c in self.changes if c.change == METADATA]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "digest": self.digest,
            "state": "running" if self.running else "stopped",
            "drifted": self.total > 0,
            "total": self.total,
            "changes": [c.to_json() for c in self.content],
            "metadata": [c.to_json() for c in self.metadata],
            "ignored": self.ignored,
            "deep": None if self.deep is None else [layer.to_json() for layer in self.deep],
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }


# --- comparing two nodes ---


def _owner(item: Node) -> str:
    return f"{item.uid}:{item.gid}"


def _compare(
    image: Node, machine: Node, hashes: Callable[[], tuple[str, str]]
) -> tuple[str, str] | None:
    """(change, detail) when ``machine`` differs from ``image``; ``hashes`` gives both files'
    sha256 and is called only for two regular files of one size."""
    if image.kind != machine.kind:
        return CHANGED, f"type {image.kind} -> {machine.kind}"
    content = ""
    if image.kind == "file":
        if image.size != machine.size:
            content = "content"
        else:
            first, second = hashes()
            content = "content" if first != second else ""
    elif image.kind in ("link", "other") and image.target != machine.target:
        what = "target" if image.kind == "link" else "device"
        content = f"{what} {image.target} -> {machine.target}"
    meta = []
    if image.kind != "link" and image.mode != machine.mode:
        meta.append(f"mode {image.mode:04o} -> {machine.mode:04o}")
    if image.uid != machine.uid or image.gid != machine.gid:
        meta.append(f"owner {_owner(image)} -> {_owner(machine)}")
    if content:
        return CHANGED, ", ".join([content, *meta])
    if meta:
        return METADATA, ", ".join(meta)
    return None


def _covers(change: Change) -> bool:
    """Whether the change stands for everything below its path: a deleted folder, or a
    folder that became something else."""
    if change.change == REMOVED:
        return change.kind == "dir"
    return change.detail.startswith("type dir -> ")


def _collapse(changes: list[Change], ignored: Sequence[str]) -> list[Change]:
    """Sorted by path, without what a covering change stands for, and without the folders
    made on the machine only to hold a state path's mount point."""
    changes.sort(key=lambda c: c.path)
    covering: list[str] = []
    out = []
    for change in changes:
        if covering and change.path.startswith(covering[-1] + "/"):
            continue
        mount_point = any(path.startswith(change.path + "/") for path in ignored)
        if change.change == ADDED and change.kind == "dir" and mount_point:
            continue
        if _covers(change):
            covering.append(change.path)
        out.append(change)
    return out


# --- the fast check: the upper dir against the unpacked layers ---


class _Lowers(Stack):
    """The image's unpacked layers as kiln.layers stacks them, with their entries as Nodes."""

    def node(self, index: int, rel: str, st: os.stat_result) -> Node:
        with self.roots[index].parent(rel) as (fd, name):
            return inventory.node(fd, name, st)

    def sha256(self, index: int, rel: str) -> str:
        with self.roots[index].parent(rel) as (fd, name):
            return inventory.file_sha256(fd, name)


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def _upper_hashes(lowers: _Lowers, index: int, rel: str, fd: int, name: str) -> tuple[str, str]:
    return lowers.sha256(index, rel), inventory.file_sha256(fd, name)


def _fast(upper: Path, lowers: _Lowers, skip: Skip) -> list[Change]:
    changes: list[Change] = []
    with Root(upper) as root:
        for rel_dir, fd, entries in root.walk():
            if rel_dir and is_opaque(fd) and lowers.stack(rel_dir):
                for name, (index, st) in sorted(lowers.children(rel_dir).items()):
                    path = "/" + _join(rel_dir, name)
                    if name not in entries and not skip(path):
                        kind = lowers.node(index, _join(rel_dir, name), st).kind
                        changes.append(Change(path, REMOVED, kind))
            for name, st in list(entries.items()):
                rel = _join(rel_dir, name)
                path = "/" + rel
                if skip(path):
                    del entries[name]  # not entered either
                    continue
                found = lowers.find(rel)
                if is_whiteout(st):
                    if found is not None:
                        kind = lowers.node(found[0], rel, found[1]).kind
                        changes.append(Change(path, REMOVED, kind))
                    continue
                try:
                    mine = inventory.node(fd, name, st)
                except FileNotFoundError:
                    continue  # removed while we looked
                if found is None:
                    changes.append(Change(path, ADDED, mine.kind))
                    continue
                index, lower_st = found
                theirs = lowers.node(index, rel, lower_st)

                hashes = partial(_upper_hashes, lowers, index, rel, fd, name)
                differs = _compare(theirs, mine, hashes)
                if differs is not None:
                    changes.append(Change(path, differs[0], mine.kind, differs[1]))
    return changes


# --- the deep check: the merged view against the layers' inventories ---


def _known(hashes: tuple[str, str]) -> tuple[str, str]:
    return hashes


def _both_files(image: Node, machine: Node) -> bool:
    """Whether _compare asks for the two files' sha256: two regular files of one size."""
    return image.kind == machine.kind == "file" and image.size == machine.size


class _Skipped:
    """Whether a path is left out: ``skip`` says so of it, or of a folder above it."""

    def __init__(self, skip: Skip) -> None:
        self.skip = skip
        self.known: dict[str, bool] = {"": False}

    def __call__(self, path: str) -> bool:
        found = self.known.get(path)
        if found is None:
            parent = path.rpartition("/")[0]
            above = self.known.get(parent)
            found = (self(parent) if above is None else above) or self.skip(path)
            self.known[path] = found
        return found


class _Batch:
    """The files of a tree, sent to be hashed a few hundred at a time as it is listed."""

    def __init__(self, hashing: treehash.Hashing, index: int, skipped: _Skipped) -> None:
        self.hashing, self.index, self.skipped = hashing, index, skipped
        self.files: list[treehash.File] = []

    def add(self, entries: list[tuple[str, Node]]) -> None:
        index, skipped = self.index, self.skipped
        self.files += (
            (index, path, item.size)
            for path, item in entries
            if item.kind == FILE and not skipped(path)
        )
        if len(self.files) >= BATCH:
            self.send()

    def send(self) -> None:
        self.hashing.send(self.files)
        self.files = []


BATCH = 256  # files sent to the hashing children at a time


def _deep(
    upper: Path,
    dirs: Sequence[Path],
    recorded: Sequence[Callable[[], dict[str, Node]] | None],
    skip: Skip,
) -> list[Change]:
    """Compare the merged view (layers as they are on disk, then the upper dir) with the
    view the inventories give (``recorded``: each layer's, read when called); a layer
    without one stands for itself.

    The files of each tree go to be hashed on every core (kiln.machines.treehash) as the
    tree is listed, while this process lists on, reads the inventories and compares the
    two views: whatever the comparison asks for is hashed by then, but for
    a file whose image copy is in a layer without an inventory (hashed after). Then the
    pairs are compared."""
    trees = treehash.Trees([*dirs, upper])
    try:
        hashing = treehash.Hashing(trees)
        try:
            top = len(dirs)  # the upper dir's index in ``actual``
            skipped = _Skipped(skip)
            listings = []
            for index, tree in enumerate([*dirs, upper]):
                if index == top or recorded[index] is not None:
                    batch = _Batch(hashing, index, skipped)
                    listings.append(inventory.listing(tree, each_folder=batch.add))
                    batch.send()
                else:
                    listings.append(inventory.listing(tree))
            on_disk = listings[:top]
            actual = merge(listings)
            loaded = [None if load is None else load() for load in recorded]
            changes, pairs = _pairs(actual, on_disk, loaded, skipped, top)
            wanted: list[treehash.File] = []
            for path, (then_index, image), (now_index, machine) in pairs:
                if _both_files(image, machine):
                    wanted.append((now_index, path, machine.size))
                    if not image.sha256:
                        wanted.append((then_index, path, image.size))
            hashed = hashing.result()
        finally:
            hashing.stop()
        hashed.update(trees.sha256s(w for w in wanted if (w[0], w[1]) not in hashed))
    finally:
        trees.close()
    for path, (then_index, image), (now_index, machine) in pairs:
        then_sha256 = image.sha256 or hashed.get((then_index, path), "")
        both = (then_sha256, hashed.get((now_index, path), ""))
        differs = _compare(image, machine, partial(_known, both))
        if differs is not None:
            layer = now_index if now_index < top else None
            changes.append(Change(path, differs[0], machine.kind, differs[1], layer))
    return changes


Pair = tuple[str, tuple[int, Node], tuple[int, Node]]  # path, then (image), now (machine)


def _pairs(
    actual: dict[str, tuple[int, Node]],
    on_disk: Sequence[dict[str, Node]],
    recorded: Sequence[dict[str, Node] | None],
    skipped: _Skipped,
    top: int,
) -> tuple[list[Change], list[Pair]]:
    """The paths added and deleted, and the pairs of a path on both sides to compare."""
    expected = merge(
        [nodes if nodes is not None else on_disk[i] for i, nodes in enumerate(recorded)]
    )
    changes: list[Change] = []
    pairs: list[Pair] = []
    lowers_now: dict[str, tuple[int, Node]] | None = None
    for path in chain(actual, expected.keys() - actual.keys()):  # _collapse sorts
        if skipped(path):
            continue
        now, then = actual.get(path), expected.get(path)
        if then is None and now is not None:
            layer = now[0] if now[0] < top else None
            changes.append(Change(path, ADDED, now[1].kind, layer=layer))
        elif now is None and then is not None:
            if lowers_now is None:
                lowers_now = merge(on_disk)  # asked only when something was deleted
            layer = then[0] if path not in lowers_now else None  # gone from the layer
            changes.append(Change(path, REMOVED, then[1].kind, layer=layer))
        elif now is not None and then is not None:
            if now[0] == then[0] and recorded[now[0]] is None:
                continue  # the same file of a layer taken as it is
            pairs.append((path, then, now))
    return changes, pairs


# --- one machine ---


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the deep check runs: it makes a few objects for
    every path of every layer and of every inventory, all alive until it ends and none
    in a cycle, and the collector would walk them all again and again as they grow."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _config(layout: Layout, digest: str) -> dict[str, Any]:
    manifest = layout.read_json(digest)
    config: dict[str, Any] = layout.read_json(manifest["config"]["digest"])
    return config


def _seal_paths(config: dict[str, Any]) -> list[str]:
    labels = (config.get("config") or {}).get("Labels") or {}
    try:
        checks = json.loads(labels.get(SEAL_LABEL) or "[]")
        return [str(check["path"]) for check in checks if isinstance(check, dict)]
    except (ValueError, KeyError, TypeError):
        return []


def _layer_dirs(state: State, name: str) -> list[Path]:
    dirs = [Path(d) for d in state.layers]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing or not dirs:
        raise StoreError(
            f"machine {name}: its image layers are gone from the store ({', '.join(missing)})"
            if missing
            else f"machine {name} records no image layers",
            hint="kiln fsck checks the store; kiln rm the machine and run it again",
        )
    return dirs


def scan(home: Home, name: str, deep: bool = False) -> Drift:
    """What machine ``name`` (running or stopped) changed against its image."""
    started = time.monotonic()
    folder = Folder.of(home, name)
    state = load(folder)
    drift = Drift(name, state.image, state.digest, process.running(state))
    layout = Layout(home.oci, tmp=home.tmp)
    try:
        config = _config(layout, state.digest)
    except (KilnError, ValueError, KeyError, TypeError):
        config = {}
        drift.notes.append(
            f"the image {state.digest} is not in the store: only the machine's volumes "
            "are known state paths"
        )
    drift.ignored = sorted(set(from_config(config).state) | set(state.volumes))
    kiln_paths = [*BOOT_PATHS, *(NETWORK_PATHS if state.network else ())]
    skip = Skip.for_machine(drift.ignored, [*_seal_paths(config), *kiln_paths])
    dirs = _layer_dirs(state, name)
    if not folder.upper.is_dir():
        raise StoreError(f"machine {name} has no upper dir ({folder.upper})")
    recorded: list[Callable[[], dict[str, Node]] | None] = []
    if deep:
        recorded, drift.deep = _inventories(layout, state, dirs, drift.notes)
    if deep and any(load is not None for load in recorded):
        with _collector_paused():
            changes = _deep(folder.upper, dirs, recorded, skip)
    else:
        lowers = _Lowers(dirs)
        try:
            changes = _fast(folder.upper, lowers, skip)
        finally:
            lowers.close()
    drift.changes = _collapse(changes, drift.ignored)
    drift.seconds = time.monotonic() - started
    return drift


def _inventories(
    layout: Layout, state: State, dirs: Sequence[Path], notes: list[str]
) -> tuple[list[Callable[[], dict[str, Node]] | None], list[LayerCheck]]:
    """Each layer's stored inventory, to be read when called (None: it has none)."""
    stored = inventory.find(layout, state.digest)
    recorded: list[Callable[[], dict[str, Node]] | None] = []
    checks = []
    for index, folder in enumerate(dirs):
        diff_id = f"sha256:{folder.name}"
        blob = stored.get(diff_id)
        what = f"{state.image} layer {index}"
        recorded.append(None if blob is None else partial(inventory.load, layout, blob, what))
        checks.append(LayerCheck(index, diff_id, blob is not None))
    missing = [c.index for c in checks if not c.inventory]
    if len(missing) == len(checks):
        notes.append(
            f"{state.image} was baked before kiln recorded file inventories: --deep "
            "re-hashed nothing, this is the fast check (rebake it to record them)"
        )
    elif missing:
        which = ", ".join(map(str, missing))
        has = "has" if len(missing) == 1 else "have"
        notes.append(
            f"layer{'s' if len(missing) > 1 else ''} {which} of {state.image} {has} no file "
            "inventory (baked before kiln recorded them): taken as on disk, not re-hashed"
        )
    return recorded, checks
