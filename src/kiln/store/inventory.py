"""A layer's file inventory: every path it holds and what that path was, kept from its bake.

The unpacked layers under ``$KILN_HOME/layers/`` are what machines stack as overlay
lowerdirs, and nothing stops a process on the host from editing one. An inventory says
what a layer held when it was baked (path, type, mode, owner, size and sha256 of each
regular file, target of each link, whiteouts and opaque folders), so ``kiln drift --deep``
can compare a machine with its image even where a layer changed behind the overlay's back.

Each layer's inventory is one blob: JSON lines, sorted by path, gzip'd (a Debian base
holds ten thousand files; its inventory is a few hundred KiB). Its bytes depend only on the
layer, so a layer shared by many images has one blob. The blobs are stored as an OCI
referrer of the image, like its provenance and SBOM: outside the manifest digest, so the
same inputs still give the same image. The referrer lists one blob per layer (annotated
with the layer's diff_id): a child's lists its parent's blobs too, so one lookup covers the
image. Images baked before kiln recorded inventories have none, and their children have
none for those layers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from kiln.digests import CHUNK, canonical_json
from kiln.errors import StoreError
from kiln.layers import DIRECTORY, FILE, LINK, WHITEOUT, is_opaque, kind
from kiln.layers import mode as entry_mode
from kiln.rootpath import Root
from kiln.store.artefacts import KIND, MEDIA_EMPTY, SUBJECT
from kiln.store.layout import FSCK_HINT, MEDIA_MANIFEST, Descriptor, Layout

ARTEFACT = "inventory"  # the artefact kind, in index.json and the catalog
ARTIFACT_TYPE = "application/vnd.kiln.inventory.v1"
MEDIA_TYPE = "application/vnd.kiln.inventory.v1.jsonl+gzip"  # one layer's inventory
DIFF_ID = "org.kiln.diff_id"  # annotation of each blob: the layer it lists
FORMAT = 1
MAX_BYTES = 1 << 30  # what an inventory may decompress to


class Node(NamedTuple):
    """What one path in a layer is. A listing leaves ``sha256`` empty until it is needed.

    A named tuple, not a dataclass: a deep drift check makes one per path of every layer
    and of its inventory, and a tuple is made in a quarter of the time."""

    kind: str  # file | dir | link | other | whiteout
    mode: int = 0  # permission bits; the whole st_mode for other (a device, FIFO, socket)
    uid: int = 0
    gid: int = 0
    size: int = 0  # regular files
    sha256: str = ""  # regular files, when hashed
    target: str = ""  # a link's target; a device's number
    opaque: bool = False  # a folder with overlayfs' opaque mark: it hides lower layers'

    def to_json(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path, "type": self.kind}
        if self.kind == "whiteout":
            return out
        out.update(mode=self.mode, uid=self.uid, gid=self.gid)
        if self.kind == "file":
            out.update(size=self.size, sha256=self.sha256)
        elif self.kind == "link":
            out["target"] = self.target
        elif self.kind == "other":
            out["rdev"] = self.target
        elif self.opaque:
            out["opaque"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Node:
        get = data.get
        return cls(
            str(data["type"]),
            int(get("mode", 0)),
            int(get("uid", 0)),
            int(get("gid", 0)),
            int(get("size", 0)),
            str(get("sha256", "")),
            str(get("target", get("rdev", ""))),
            bool(get("opaque", False)),
        )


OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
NOT_REGULAR = "not a regular file any more"  # a file's digest when it was swapped as we looked


def open_regular(fd: int, name: str) -> tuple[int, int] | None:
    """A descriptor of the regular file ``name`` in the folder ``fd`` and its size (a link
    is never followed, a FIFO never waited on), or None when ``name`` is no regular file."""
    file = os.open(name, OPEN_FLAGS, dir_fd=fd)
    st = os.fstat(file)
    if stat.S_ISREG(st.st_mode):
        return file, st.st_size
    os.close(file)
    return None


def sha256_of(file: int, size: int, buffer: bytearray | None = None) -> str:
    """sha256 of what is left to read from the descriptor ``file`` (``size``: its size as
    it was opened, a hint for the reads), which is closed after.

    Read with plain system calls, without a buffered file object: a layer holds
    thousands of small files, each read in one call of a byte more than its size: a
    shorter answer, once ``size`` bytes are in, is its end, and no second call is needed
    to see it. A large file is read into ``buffer`` (one per thread) rather than into a
    new bytes object per chunk. Either way the file is read to its end, however much it
    grew."""
    digest = hashlib.sha256()
    try:
        if buffer is None:
            step, done = min(CHUNK, max(size, 0) + 1), 0
            while chunk := os.read(file, step):
                digest.update(chunk)
                done += len(chunk)
                if len(chunk) < step and done >= size:
                    break
        else:
            view = memoryview(buffer)
            while count := os.readv(file, [buffer]):
                digest.update(view[:count])
    finally:
        os.close(file)
    return digest.hexdigest()


def file_sha256(fd: int, name: str) -> str:
    """sha256 of the regular file ``name`` in the folder ``fd``, never following a link."""
    found = open_regular(fd, name)
    return NOT_REGULAR if found is None else sha256_of(*found)


def node(fd: int, name: str, st: os.stat_result, sha256: str = "") -> Node:
    """The Node of ``name`` in folder ``fd`` from its lstat (a link is read, not followed)."""
    what, mode, uid, gid = kind(st), entry_mode(st), st.st_uid, st.st_gid
    if what == FILE:
        return Node(what, mode, uid, gid, st.st_size, sha256)
    if what == DIRECTORY:
        return Node(what, mode, uid, gid)
    if what == LINK:
        return Node(what, mode, uid, gid, target=os.readlink(name, dir_fd=fd))
    if what == WHITEOUT:
        return Node(what)
    return Node(what, mode, uid, gid, target=str(st.st_rdev))


def _path(rel_dir: str, name: str) -> str:
    return f"/{rel_dir}/{name}" if rel_dir else f"/{name}"


def listing(
    tree: Path,
    hash_files: bool = False,
    each_folder: Callable[[list[tuple[str, Node]]], None] | None = None,
) -> dict[str, Node]:
    """Every path below ``tree`` (as '/etc/x'), parents before children, read through
    kiln.rootpath: no symlink is followed and no other mount entered. Files are hashed only
    with ``hash_files``; a file hard-linked under several names is read once.
    ``each_folder`` is given the entries of each folder as soon as it is read."""
    out: dict[str, Node] = {}
    hashed: dict[tuple[int, int], str] = {}
    with Root(tree) as root:
        for rel_dir, fd, entries in root.walk():
            here = "/" + rel_dir if rel_dir else ""
            if here in out and is_opaque(fd):
                out[here] = out[here]._replace(opaque=True)
            folder = []
            for name, st in entries.items():
                digest = ""
                if hash_files and stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key not in hashed:
                        hashed[key] = file_sha256(fd, name)
                    digest = hashed[key]
                try:
                    folder.append((_path(rel_dir, name), node(fd, name, st, digest)))
                except FileNotFoundError:
                    continue  # removed while we walked
            out.update(folder)
            if each_folder is not None:
                each_folder(folder)
    return out


# A path is kept as the file system's bytes: one that is not UTF-8 round-trips through
# Python's lone surrogates (os.fsdecode) instead of failing the bake that records it.
NAMES = "surrogateescape"


def encode(diff_id: str, nodes: Mapping[str, Node]) -> bytes:
    """The blob: a header line, then one line per path in sorted order, gzip'd with no
    time or name in its header, so the same layer always gives the same bytes."""
    lines = [canonical_json({"inventory": FORMAT, "diff_id": diff_id})]
    lines += [canonical_json(nodes[path].to_json(path), NAMES) for path in sorted(nodes)]
    return gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)


def decode(data: bytes, what: str) -> tuple[str, dict[str, Node]]:
    """(diff_id, nodes) from a blob; StoreError when it is not an inventory kiln wrote."""
    try:
        stream = zlib.decompressobj(wbits=31)
        text = stream.decompress(data, MAX_BYTES)
        if stream.unconsumed_tail:
            raise StoreError(f"{what} decompresses to more than {MAX_BYTES} bytes")
        first, _, body = text.partition(b"\n")
        header = json.loads(first)
        if header.get("inventory") != FORMAT:
            raise StoreError(f"{what} is inventory format {header.get('inventory')!r}, not 1")
        lines = body.removesuffix(b"\n").decode("utf-8", NAMES)
        # The lines as one JSON array, parsed in one call rather than one call per line
        # (a line of canonical JSON holds no newline); as many items as lines, or a line
        # held more than one.
        items = json.loads("[" + lines.replace("\n", ",") + "]") if lines else []
        if len(items) != (lines.count("\n") + 1 if lines else 0):
            raise ValueError("a line holds more than one entry")
        nodes = {str(item["path"]): Node.from_json(item) for item in items}
        return str(header["diff_id"]), nodes
    except (zlib.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise StoreError(f"{what} is damaged: {exc}", hint=FSCK_HINT) from None


def record(layout: Layout, tree: Path, diff_id: str) -> Descriptor:
    """List and hash the unpacked layer ``tree`` and store its inventory as a blob."""
    blob = layout.put_bytes(encode(diff_id, listing(tree, hash_files=True)), MEDIA_TYPE)
    return Descriptor(MEDIA_TYPE, blob.digest, blob.size, ((DIFF_ID, diff_id),))


def find(layout: Layout, image_digest: str) -> dict[str, Descriptor]:
    """The stored inventories of an image's layers: diff_id -> blob (empty if none)."""
    for entry in layout.read_index()["manifests"]:
        annotations = entry.get("annotations") or {}
        if annotations.get(SUBJECT) == image_digest and annotations.get(KIND) == ARTEFACT:
            return _listed(layout, entry["digest"])
    return {}


def find_all(layout: Layout) -> dict[str, dict[str, Descriptor]]:
    """:func:`find` for every image with inventories, index.json read once: image manifest
    digest -> diff_id -> blob."""
    out: dict[str, dict[str, Descriptor]] = {}
    for entry in layout.read_index()["manifests"]:
        annotations = entry.get("annotations") or {}
        subject = annotations.get(SUBJECT)
        if subject and annotations.get(KIND) == ARTEFACT and subject not in out:
            out[str(subject)] = _listed(layout, entry["digest"])
    return out


def _listed(layout: Layout, referrer: str) -> dict[str, Descriptor]:
    found = {}
    for blob in layout.read_json(referrer).get("layers") or []:
        descriptor = Descriptor.from_json(blob)
        diff_id = dict(descriptor.annotations).get(DIFF_ID)
        if diff_id:
            found[diff_id] = descriptor
    return found


def attach(
    layout: Layout, layers: Path, image: Descriptor, parent_digest: str | None, created: str
) -> tuple[Descriptor, str]:
    """Record the inventory of the image's top layer (unpacked under ``layers``), and store
    the referrer listing it with the parent's; return the referrer's index entry and the
    top layer's blob digest. Call it before the image is tagged (it is written untagged)."""
    manifest = layout.read_json(image.digest)
    diff_ids: list[str] = layout.read_json(manifest["config"]["digest"])["rootfs"]["diff_ids"]
    top = diff_ids[-1]
    inherited = find(layout, parent_digest) if parent_digest else {}
    blobs = [inherited[d] for d in diff_ids[:-1] if d in inherited]
    blobs.append(record(layout, layers / top.split(":", 1)[1], top))
    empty = layout.put_bytes(b"{}", MEDIA_EMPTY)
    referrer = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": empty.to_json(),
        "layers": [blob.to_json() for blob in blobs],
        "subject": image.to_json(),
        "annotations": {"org.opencontainers.image.created": created},
    }
    stored = layout.put_json(referrer, MEDIA_MANIFEST)
    entry = Descriptor(
        MEDIA_MANIFEST,
        stored.digest,
        stored.size,
        annotations=((KIND, ARTEFACT), (SUBJECT, image.digest)),
        artifact_type=ARTIFACT_TYPE,
    )
    return entry, blobs[-1].digest


def load(layout: Layout, blob: Descriptor, what: str) -> dict[str, Node]:
    """A layer's inventory, its blob checked against its digest first."""
    data = layout.read_bytes(blob.digest)
    if hashlib.sha256(data).hexdigest() != blob.hex:
        raise StoreError(f"{what}: inventory blob {blob.digest} is corrupt", hint=FSCK_HINT)
    diff_id, nodes = decode(data, f"{what}: inventory blob {blob.digest}")
    wanted = dict(blob.annotations).get(DIFF_ID)
    if wanted and diff_id != wanted:
        raise StoreError(f"{what}: inventory blob {blob.digest} lists {diff_id}, not {wanted}")
    return nodes


def without_sockets(nodes: Mapping[str, Node]) -> dict[str, Node]:
    """``nodes`` less the sockets: tar leaves them out of a layer blob, so only the store that
    baked a layer holds them in its unpacked copy (and lists them in its inventory)."""
    return {
        path: item
        for path, item in nodes.items()
        if not (item.kind == "other" and stat.S_ISSOCK(item.mode))
    }


def differences(recorded: Mapping[str, Node], actual: Mapping[str, Node]) -> list[tuple[str, str]]:
    """(path, what differs) for each path where one layer's tree as it is (``actual``, a
    :func:`listing` with hashes) is not what its inventory recorded, sorted by path: its
    content, a link's target or a device's number, its type, mode, owner or opaque mark;
    "missing" and "extra" for a path on one side only. What is below a missing or extra
    folder, or one that became something else, is not listed again."""
    out: list[tuple[str, str]] = []
    covered = ""  # a folder whose change stands for everything below it
    for path in sorted(recorded.keys() | actual.keys()):
        if covered and path.startswith(covered + "/"):
            continue
        then, now = recorded.get(path), actual.get(path)
        if then is None or now is None:
            seen = then or now
            assert seen is not None
            out.append((path, f"missing ({seen.kind})" if now is None else f"extra ({seen.kind})"))
            covered = path if seen.kind == "dir" else covered
            continue
        if then.kind != now.kind:
            out.append((path, f"type {then.kind} -> {now.kind}"))
            covered = path if "dir" in (then.kind, now.kind) else covered
            continue
        detail = _differs(then, now)
        if detail:
            out.append((path, ", ".join(detail)))
    return out


def _differs(then: Node, now: Node) -> list[str]:
    detail = []
    if then.kind == "file" and (then.size != now.size or then.sha256 != now.sha256):
        detail.append("content")
    elif then.kind == "link" and then.target != now.target:
        detail.append(f"target {then.target} -> {now.target}")
    elif then.kind == "other" and then.target != now.target:
        detail.append(f"device {then.target} -> {now.target}")
    if then.kind != "link" and then.mode != now.mode:
        detail.append(f"mode {then.mode:04o} -> {now.mode:04o}")
    if (then.uid, then.gid) != (now.uid, now.gid):
        detail.append(f"owner {then.uid}:{then.gid} -> {now.uid}:{now.gid}")
    if then.opaque != now.opaque:
        detail.append("opaque mark " + ("removed" if then.opaque else "added"))
    return detail


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def walk_up(path: str) -> Iterator[str]:
    """The folders above ``path`` ('/a/b/c' gives '/a/b', '/a'), nearest first."""
    parent = _parent(path)
    while parent:
        yield parent
        parent = _parent(parent)
