"""`kiln gc`, the store side: unreferenced blobs and unpacked layers, and what gc reports.

Nothing is removed by age. A blob or an unpacked layer is garbage when
no image in index.json refers to it, decided while ``locks/store.lock`` is held
exclusively, which every bake holds shared from layer capture until its tag is written.
Leftover folders (a dead bake's build folder, with what may still run and be mounted
in it) are cleared here too, by flock, never by age. Machines (``machines/``) are never touched.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import locks, proc
from kiln.errors import StoreError
from kiln.home import Home
from kiln.mounts import kill_all, mounts_below, processes_in, remove_tree
from kiln.store.layout import REF_ANNOTATION, Layout, image_ref


def store_in_use(home: Home) -> AbstractContextManager[None]:
    """Shared hold of ``locks/store.lock``: new blobs and layers are on their way to a tag."""
    return locks.locked(home.store_lock, shared=True)


def store_sweep(home: Home) -> AbstractContextManager[None]:
    """Exclusive hold of ``locks/store.lock``: no bake is between capture and tag."""
    return locks.locked(home.store_lock)


def sweep_bake_locks(home: Home, dry_run: bool) -> int:
    """Remove the per-cache-key lock files that no bake holds; returns how many."""
    removed = 0
    for path in sorted(home.locks.glob("bake-*.lock")) if home.locks.is_dir() else []:
        if dry_run:
            removed += locks.is_abandoned(path)
        else:
            removed += locks.remove_unheld(path)
    return removed


@dataclass
class Item:
    kind: str  # build | tmp | blob | layer | index | image
    path: str
    bytes: int
    processes: list[int] = field(default_factory=list)  # killed before removal
    mounts: list[str] = field(default_factory=list)  # unmounted before removal

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "bytes": self.bytes,
            "processes": self.processes,
            "mounts": self.mounts,
        }


@dataclass
class Report:
    dry_run: bool
    items: list[Item] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for item in self.items if item.kind == kind)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    def to_json(self) -> dict[str, Any]:
        kinds = ("build", "tmp", "blob", "layer", "index", "image")
        return {
            "dry_run": self.dry_run,
            "removed": {kind: self.count(kind) for kind in kinds},
            "bytes": self.bytes,
            "items": [item.to_json() for item in self.items],
        }


def size_of(path: Path) -> int:
    """Bytes a file or a tree takes on disk, without crossing into other file systems."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    total = top.st_blocks * 512
    if not os.path.isdir(path) or os.path.islink(path):
        return total
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_dev != top.st_dev:
                continue
            total += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
    return total


def referenced(layout: Layout) -> tuple[set[str], set[str], list[dict[str, Any]]]:
    """Blobs and diff_ids that index.json reaches, and index entries whose blobs are gone
    or whose subject is no longer tagged (referrers of an image that was taken back)."""
    blobs: set[str] = set()
    diff_ids: set[str] = set()
    stale: list[dict[str, Any]] = []
    entries = layout.read_index()["manifests"]
    tagged = {e["digest"] for e in entries if REF_ANNOTATION in (e.get("annotations") or {})}
    for entry in entries:
        digest = entry["digest"]
        try:
            manifest = layout.read_json(digest)
        except (StoreError, ValueError):
            blobs.add(digest)  # a fault for fsck to report, not garbage to hide
            continue
        annotations = entry.get("annotations") or {}
        subject = (manifest.get("subject") or {}).get("digest")
        if image_ref(entry) is None and subject is not None and subject not in tagged:
            stale.append(entry)
            continue
        blobs.add(digest)
        config = manifest.get("config") or {}
        blobs.add(config.get("digest", ""))
        blobs |= {layer.get("digest", "") for layer in manifest.get("layers", [])}
        if REF_ANNOTATION in annotations and config.get("digest"):
            with suppress(StoreError, ValueError, KeyError, TypeError):
                diff_ids |= set(layout.read_json(config["digest"])["rootfs"]["diff_ids"])
    return blobs, diff_ids, stale


def sweep_store(home: Home, layout: Layout, dry_run: bool) -> list[Item]:
    """Unreferenced blobs, unpacked layers and stale referrer entries. Hold
    :func:`store_sweep` around this (and around taking back pending images before it)."""
    out = []
    blobs, diff_ids, stale = referenced(layout)
    if stale:
        drop = {entry["digest"] for entry in stale}
        out += [Item("index", f"index.json: {entry['digest']}", 0) for entry in stale]
        if not dry_run:
            layout.prune(lambda entry: entry["digest"] in drop)
    keep_hex = {digest.split(":", 1)[1] for digest in blobs if ":" in digest}
    for path in sorted(layout.blobs.iterdir()) if layout.blobs.is_dir() else []:
        if path.name in keep_hex:
            continue
        out.append(Item("blob", str(path), size_of(path)))
        if not dry_run:
            path.unlink(missing_ok=True)
    keep_layers = {diff_id.split(":", 1)[1] for diff_id in diff_ids if ":" in diff_id}
    for path in sorted(home.layers.iterdir()) if home.layers.is_dir() else []:
        name = path.name.split(".", 1)[0]  # a marker beside a layer goes with it
        if len(name) != 64 or name in keep_layers:
            continue
        out.append(Item("layer", str(path), size_of(path)))
        if not dry_run:
            proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    return out


def clear(path: Path, kind: str, dry_run: bool) -> Item:
    """Stop everything still working in a dead owner's folder, unmount, then remove it."""
    item = Item(kind, str(path), size_of(path))
    if path.is_dir() and not path.is_symlink():
        item.processes = processes_in(path)
        item.mounts = [str(point) for point in mounts_below(path)]
    if dry_run:
        return item
    # kill until nothing is left: a dying nspawn can still have children starting up
    for _round in range(5):
        if not item.processes:
            break
        kill_all(item.processes)
        more = processes_in(path)
        item.processes += [pid for pid in more if pid not in item.processes]
        if not more:
            break
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        remove_tree(path)  # unmounts deepest first, then rm --one-file-system
    return item


def sweep_owned(parent: Path, kind: str, dry_run: bool) -> list[Item]:
    """Every abandoned entry of ``parent`` (builds/ or tmp/): nobody holds its flock."""
    out = []
    for path, held in locks.abandoned(parent):
        try:
            out.append(clear(path, kind, dry_run))
        finally:
            held.release()
    return out
