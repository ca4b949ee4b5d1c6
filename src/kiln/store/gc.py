"""`kiln gc`, the store side: unreferenced blobs and unpacked layers, package-cache files,
and what gc reports.

Nothing is removed by age. A blob or an unpacked layer is garbage when
no image in index.json refers to it, decided while ``locks/store.lock`` is held
exclusively, which every bake holds shared from layer capture until its tag is written.
An unpacked layer that a live overlay mounts (a bake's root, a machine's) stays whatever
index.json says. Leftover folders (a dead bake's build folder, with what may still run and
be mounted in it) are cleared here too, by flock, never by age. Machines (``machines/``)
are never touched. Which image versions go is retention's decision (kiln.lifecycle.retention,
carried out by kiln.app.images); the bytes they leave behind go here.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Collection, Iterable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import locks, proc
from kiln.errors import StoreError
from kiln.home import Home
from kiln.mounts import kill_all, mounts_below, processes_in, remove_tree
from kiln.store.artefacts import SUBJECT
from kiln.store.layout import Layout, image_ref


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


@dataclass(slots=True)
class Item:
    kind: str  # build | tmp | blob | layer | index | image | version | deb | apt-index | nspawn
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


# nspawn: a cgroup or propagate folder a killed systemd-nspawn left (kiln.machines.leftovers)
KINDS = ("build", "tmp", "blob", "layer", "index", "image", "version", "deb", "apt-index", "nspawn")


@dataclass
class Report:
    dry_run: bool
    items: list[Item] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return self.counts()[kind]

    def counts(self) -> dict[str, int]:
        found = Counter(item.kind for item in self.items)
        return {kind: found[kind] for kind in KINDS}

    def bytes_of(self, kind: str) -> int:
        return sum(item.bytes for item in self.items if item.kind == kind)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": self.counts(),
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


_DECODER = json.JSONDecoder()  # json.loads' own decoder, with its defaults
UNREADABLE = object()  # a manifest gc could not read or parse


def _parse(data: bytes) -> Any:
    """``json.loads(data)``, the same answer and the same errors, without its encoding
    guess for the document every manifest is: UTF-8 that starts with ``{`` (json.loads
    reads such bytes as UTF-8 too; anything else is left to it)."""
    if data[:1] == b"{" and data[1:2] != b"\x00":
        return _DECODER.decode(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


class BlobDir:
    """The blobs folder, opened once: blobs are read and stat'ed by name relative to it.

    A store holds tens of thousands of blobs; resolving a path and going through Python's
    buffered file objects for each would cost gc several times the system calls it needs.
    """

    def __init__(self, layout: Layout) -> None:
        self.folder = layout.blobs
        try:
            self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.fd = -1

    def __enter__(self) -> BlobDir:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read_json(self, digest: str, size: int | None = None) -> Any:
        """A blob's JSON; StoreError when it is missing, ValueError when it is no JSON."""
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or "/" in hexdigest or self.fd < 0:
            raise StoreError(f"blob {digest} is not in {self.folder}")
        try:
            fd = os.open(hexdigest, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from {self.folder}") from None
        try:
            want = size + 1 if isinstance(size, int) and 0 <= size < 1 << 24 else 1 << 16
            parts = []
            while True:  # a short read of a regular file is its end
                chunk = os.read(fd, want)
                parts.append(chunk)
                if len(chunk) < want:
                    break
        finally:
            os.close(fd)
        return _parse(parts[0] if len(parts) == 1 else b"".join(parts))

    def names(self, but: Collection[str] = ()) -> list[str]:
        """The blobs' names (hex digests), sorted, less those in ``but``."""
        if self.fd < 0:
            return []
        return sorted(name for name in os.listdir(self.fd) if name not in but)

    def blocks(self, names: Iterable[str]) -> list[int]:
        """Bytes each blob takes on disk (0 for one that went meanwhile)."""
        fd, lstat, out = self.fd, os.lstat, []
        for name in names:
            try:
                out.append(lstat(name, dir_fd=fd).st_blocks * 512)
            except FileNotFoundError:
                out.append(0)
        return out

    def unlink(self, name: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)


def referenced(
    layout: Layout,
    dropped: Collection[str] = (),
    index: dict[str, Any] | None = None,
    layers: bool = True,
) -> tuple[set[str], set[str], list[dict[str, Any]]]:
    """Blobs and diff_ids that index.json reaches, and index entries whose blobs are gone
    or whose subject is no longer tagged (referrers of an image that was taken back).

    ``dropped``: image refs to count as untagged already (what a dry run would remove);
    ``index``: index.json as the caller read it. A referrer's subject is read from its
    index annotation when it has one, so the manifests of what goes are never opened.
    Without ``layers`` the diff_ids are not wanted (no layer is unpacked): the images'
    configs are not opened.
    """
    blobs: set[str] = set()
    diff_ids: set[str] = set()
    stale: list[dict[str, Any]] = []
    manifests = (index or layout.read_index())["manifests"]
    entries = [(e, ref) for e in manifests if (ref := image_ref(e)) not in dropped]
    tagged = {e["digest"] for e, ref in entries if ref}
    read: dict[str, Any] = {}  # manifest digest -> its JSON (or UNREADABLE), read once
    configs: set[str] = set()  # configs whose diff_ids are in (or cannot be read)
    add = blobs.add
    with BlobDir(layout) as store:
        for entry, ref in entries:
            digest = entry["digest"]
            if ref is None:
                subject = (entry.get("annotations") or {}).get(SUBJECT)
                if subject is not None and subject not in tagged:
                    stale.append(entry)
                    continue
            if digest in read:
                manifest = read[digest]
            else:
                try:
                    manifest = store.read_json(digest, entry.get("size"))
                except (StoreError, ValueError):
                    manifest = UNREADABLE
                read[digest] = manifest
            if manifest is UNREADABLE:
                add(digest)  # a fault for fsck to report, not garbage to hide
                continue
            subject = (manifest.get("subject") or {}).get("digest")
            if ref is None and subject is not None and subject not in tagged:
                stale.append(entry)
                continue
            add(digest)
            config = manifest.get("config") or {}
            add(config.get("digest", ""))
            for layer in manifest.get("layers", []):
                add(layer.get("digest", ""))
            wanted = layers and ref is not None and config.get("digest")
            if wanted and wanted not in configs:
                configs.add(wanted)
                with suppress(StoreError, ValueError, KeyError, TypeError):
                    found = store.read_json(wanted, config.get("size"))
                    diff_ids |= set(found["rootfs"]["diff_ids"])
    return blobs, diff_ids, stale


def sweep_store(
    home: Home,
    layout: Layout,
    dry_run: bool,
    dropped: Collection[str] = (),
    index: dict[str, Any] | None = None,
) -> list[Item]:
    """Unreferenced blobs, unpacked layers and stale referrer entries. Hold
    :func:`store_sweep` around this (and around taking back pending images before it).

    ``dropped``: image refs a dry run would untag first, so it lists what they leave
    (``index``: index.json as the caller read it, unchanged since). An unpacked layer a
    live overlay mounts is never removed.
    """
    out = []
    unpacked = _paths(home.layers)
    blobs, diff_ids, stale = referenced(layout, dropped, index, layers=bool(unpacked))
    if stale:
        drop = {entry["digest"] for entry in stale}
        out += [Item("index", f"index.json: {entry['digest']}", 0) for entry in stale]
        if not dry_run:
            layout.prune(lambda entry: image_ref(entry) is None and entry["digest"] in drop)
    keep_hex = {digest.split(":", 1)[1] for digest in blobs if ":" in digest}
    with BlobDir(layout) as store:
        folder = str(layout.blobs)
        going = store.names(but=keep_hex)
        out += [
            Item("blob", f"{folder}/{name}", size)
            for name, size in zip(going, store.blocks(going), strict=True)
        ]
        if not dry_run:
            for name in going:
                store.unlink(name)
    keep_layers = {diff_id.split(":", 1)[1] for diff_id in diff_ids if ":" in diff_id}
    keep_layers |= mounted_layers(home).keys()
    for path in unpacked:
        name = path.name.split(".", 1)[0]  # a marker beside a layer goes with it
        if len(name) != 64 or name in keep_layers:
            continue
        out.append(Item("layer", str(path), size_of(path)))
        if not dry_run:
            proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    return out


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries by name, or none when it is missing."""
    try:
        with os.scandir(folder) as found:
            return sorted(found, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []


def _blocks(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_blocks * 512
    except FileNotFoundError:
        return 0


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it: space, tab, newline, backslash in octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounted_layers(home: Home, mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Unpacked layers (by hex) that a live overlay mounts as a lower dir, each with the
    mount point: a bake's root under ``builds/``, a machine's under ``machines/``."""
    prefix = str(home.layers.resolve()) + "/"
    found: dict[str, str] = {}
    try:
        with open(mountinfo) as info:
            lines = info.readlines()
    except OSError:
        return found
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "overlay":
            continue
        point = _unescape(fields[4])
        for option in tail[2].split(","):
            key, _, value = option.partition("=")
            if key not in ("lowerdir", "lowerdir+", "datadir+"):
                continue
            for lower in value.split(":"):
                lower = _unescape(lower)
                if lower.startswith(prefix):
                    found.setdefault(lower[len(prefix) :].split("/", 1)[0], point)
    return found


def bakes_running(home: Home) -> list[Path]:
    """Build folders a live bake (or ``kiln lock``) holds."""
    return [path for path in _paths(home.builds) if not locks.is_abandoned(path)]


def _paths(folder: Path) -> list[Path]:
    return [Path(entry.path) for entry in _entries(folder)]


def sweep_debs(home: Home, needed: Collection[str], dry_run: bool) -> list[Item]:
    """Package-cache files no image and no lock needs (``needed``: their sha256s).

    The cache (kiln.bake.debcache) keeps ``<sha256>.deb``, hard links to it under
    ``by-name/``, and its control paragraph under ``control/<sha256>``: all three go.
    Call it only when no bake runs (:func:`bakes_running`): a bake between fetching a
    package and linking it into its root would lose it.
    """
    root = home.debs
    debs = [
        entry
        for entry in _entries(root)
        if entry.name.endswith(".deb") and entry.is_file(follow_symlinks=False)
    ]
    going = [entry for entry in debs if entry.name[: -len(".deb")] not in needed]
    if not going:
        return []
    links: dict[int, list[str]] = {}
    for entry in _entries(root / "by-name"):
        with suppress(FileNotFoundError):
            links.setdefault(entry.stat(follow_symlinks=False).st_ino, []).append(entry.path)
    out = []
    for entry in going:
        try:
            inode = entry.stat(follow_symlinks=False).st_ino
        except FileNotFoundError:
            continue
        out.append(Item("deb", entry.path, _blocks(entry)))
        if dry_run:
            continue
        for link in links.get(inode, []):
            Path(link).unlink(missing_ok=True)
        (root / "control" / entry.name[: -len(".deb")]).unlink(missing_ok=True)
        Path(entry.path).unlink(missing_ok=True)
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
