"""`kiln fsck`: check every blob's digest and every reference, store and catalog.

Faults make the check fail (exit 1): a blob whose content does not match its name, a
compressed layer that does not decompress to its diff_id, a reference to a missing blob,
a size that disagrees with its descriptor, an index entry the catalog does not know or the
reverse. Notes are harmless: an unreferenced blob, a layer
not unpacked yet (it is unpacked again on first use), leftovers of an interrupted bake
(build folders and temporary entries nobody holds, a catalog row of an unfinished bake,
unpacked layers no image uses): ``kiln gc`` removes those.

On a catalog many stores share, the catalog rows fsck is handed are those this store
holds; a row only other stores hold (``elsewhere``) is no fault for its bytes missing
here: the report lists it, with where it is held.

The unpacked layers under ``layers/`` are trusted as they are, the way containerd trusts a
snapshot: a machine stacks them without reading its blobs, so a corrupt blob whose
unpacked copy is intact still boots (and plain fsck reports the blob). ``--deep`` also
re-hashes every unpacked layer and compares it with the file inventory its bake recorded
(kiln.store.inventory): each path whose content, type, mode or owner differs, or that is
missing or extra, is a fault naming the layer. Sockets are left out on both sides: a layer
blob never holds them, so whether an unpacked copy does depends on where it was unpacked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln import locks
from kiln.digests import file_sha256
from kiln.errors import KilnError
from kiln.home import Home
from kiln.store import inventory
from kiln.store.artefacts import KIND
from kiln.store.gc import store_in_use
from kiln.store.layer import MEDIA_TYPES, read_stream
from kiln.store.layout import MEDIA_LAYER, MEDIA_MANIFEST, Descriptor, Layout, image_ref


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blobs: int = 0
    images: int = 0
    layers: int = 0  # unpacked layers compared with their inventories (--deep)
    elsewhere: dict[str, str] = field(default_factory=dict)  # ref -> where it is held

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "faults": self.faults,
            "notes": self.notes,
            "blobs": self.blobs,
            "images": self.images,
            "layers": self.layers,
            "elsewhere": [
                {"ref": ref, "held": held} for ref, held in sorted(self.elsewhere.items())
            ],
        }


# What the catalog says of each image version: ref -> (finished, manifest digest), where a
# row that is not finished is a bake between taking its version and tagging its image.
CatalogRows = dict[str, tuple[bool, str]]
# The catalog's rows this store does not hold, each with where it is held: ref -> what.
Elsewhere = dict[str, str]


def check(
    home: Home,
    layout: Layout,
    catalog_rows: Callable[[], CatalogRows],
    deep: bool = False,
    elsewhere: Callable[[], Elsewhere] = dict,
) -> Report:
    """Check the store against the catalog; safe to run beside bakes and gc. With ``deep``,
    also check each unpacked layer against its inventory. ``catalog_rows``: the rows this
    store holds; ``elsewhere``: the rest, read after them.

    The shared store lock keeps ``kiln gc`` from removing blobs under the check. The
    catalog is read before index.json: a bake tags its image only after its catalog row
    exists, and marks the row ok only after the tag, so every ok row read is in the index
    read after it; an index entry newer than the catalog read is looked up again.
    """
    with store_in_use(home):
        report = _check(home, layout, catalog_rows, elsewhere)
        if deep:
            _check_unpacked(home, layout, report)
        return report


def _check(
    home: Home,
    layout: Layout,
    catalog_rows: Callable[[], CatalogRows],
    elsewhere: Callable[[], Elsewhere],
) -> Report:
    report = Report()
    rows = catalog_rows()
    others = elsewhere()
    _check_layout_files(layout, report)
    good: set[str] = set()
    for path in sorted(layout.blobs.iterdir()) if layout.blobs.is_dir() else []:
        report.blobs += 1
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            continue  # a blob being replaced by its own content: harmless
        if actual != path.name:
            report.faults.append(f"blob {path.name} is corrupt: its content hashes to {actual}")
        else:
            good.add(f"sha256:{path.name}")
    referenced: set[str] = set()
    refs = layout.refs()
    unknown = sorted(refs.keys() - rows.keys())
    if unknown:  # tagged after the catalog was read: read those rows again
        again = catalog_rows()
        rows.update({ref: again[ref] for ref in unknown if ref in again})
        others = {ref: held for ref, held in elsewhere().items() if ref not in rows}
    unpacks_to: dict[str, str | None] = {}  # a layer blob's diff_id, read once per blob
    for ref, manifest in sorted(refs.items()):
        report.images += 1
        referenced |= _check_image(
            home, layout, ref, (manifest.digest, manifest.size), good, unpacks_to, report
        )
    tagged = {d.digest for d in refs.values()}
    for entry in layout.read_index()["manifests"]:
        if image_ref(entry):  # a signature tag is checked as the artefact it is
            continue
        referenced |= _check_referrer(layout, entry, tagged, good, report)
    for digest in sorted(good - referenced):
        report.notes.append(f"blob {digest} is not referenced by any image ({GC})")
    for ref, (finished, digest) in sorted(rows.items()):
        if not finished:
            report.notes.append(f"catalog image {ref} is from an unfinished bake ({GC})")
            continue
        entry = refs.get(ref)
        if entry is None:
            report.faults.append(f"catalog image {ref} has no entry in index.json")
        elif entry.digest != digest:
            report.faults.append(f"catalog says {ref} is {digest}, index.json says {entry.digest}")
    for ref in sorted(refs.keys() - rows.keys()):
        if ref in others:
            report.faults.append(  # a tag of the row's digest would have been claimed
                f"index.json names {ref}, which the catalog says only {others[ref]} holds, "
                f"as other bytes than {refs[ref].digest}"
            )
        else:
            report.faults.append(f"index.json names {ref}, which the catalog does not know")
    report.elsewhere = {ref: held for ref, held in others.items() if ref not in refs}
    _check_package_cache(home, report)
    _check_leftovers(home, layout, refs, report)
    return report


GC = "'kiln gc' removes it"


def _check_unpacked(home: Home, layout: Layout, report: Report) -> None:
    """Each unpacked layer an image uses against the inventory recorded when it was baked,
    once per layer, named after the first image (by ref) that lists it."""
    recorded = inventory.find_all(layout)
    layers: dict[str, tuple[str, Descriptor | None]] = {}  # diff_id -> (what, inventory)
    for ref, manifest in sorted(layout.refs().items()):
        try:
            config = layout.read_json(layout.read_json(manifest.digest)["config"]["digest"])
            diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        except (KilnError, ValueError, KeyError, TypeError):
            continue  # reported as a fault already
        found = recorded.get(manifest.digest, {})
        for number, diff_id in enumerate(diff_ids):
            what, blob = layers.get(diff_id, (f"{ref} layer {number}", None))
            layers[diff_id] = (what, blob or found.get(diff_id))
    for diff_id, (what, blob) in sorted(layers.items(), key=lambda item: item[1][0]):
        tree = home.layers / diff_id.split(":", 1)[-1]
        if not tree.is_dir():
            continue  # noted above: unpacked (verified) on next use
        if blob is None:
            report.notes.append(
                f"{what}: no file inventory (baked before kiln recorded them): its unpacked "
                f"copy {tree} is not checked"
            )
            continue
        try:
            nodes = inventory.without_sockets(inventory.load(layout, blob, what))
        except KilnError as exc:
            report.faults.append(f"{exc.message}: its unpacked copy {tree} is not checked")
            continue
        report.layers += 1
        actual = inventory.without_sockets(inventory.listing(tree, hash_files=True))
        differs = inventory.differences(nodes, actual)
        for path, detail in differs:
            report.faults.append(f"{what} unpacked in {tree}: {path}: {detail}")
        if differs:
            report.notes.append(
                f"{what} changed on disk: stop the machines that use it and remove {tree}; "
                "kiln unpacks it again from its blob, verified, on next use"
            )


def _check_leftovers(home: Home, layout: Layout, refs: dict[str, Any], report: Report) -> None:
    """What dead processes left (nobody holds its flock), and unpacked layers no image uses."""
    for parent, what in ((home.builds, "build folder"), (home.tmp, "temporary entry")):
        for path in sorted(parent.iterdir()) if parent.is_dir() else []:
            if locks.is_abandoned(path):
                report.notes.append(f"leftover {what} {path} (a kept or interrupted bake; {GC})")
    used: set[str] = set()
    for descriptor in refs.values():
        try:
            config = layout.read_json(layout.read_json(descriptor.digest)["config"]["digest"])
            used |= {d.split(":", 1)[-1] for d in config["rootfs"]["diff_ids"]}
        except (KilnError, ValueError, KeyError, TypeError):
            continue  # reported as a fault above
    for path in sorted(home.layers.iterdir()) if home.layers.is_dir() else []:
        name = path.name.split(".", 1)[0]
        if len(name) == 64 and name not in used:
            report.notes.append(f"unpacked layer {path} is used by no image ({GC})")


def _check_package_cache(home: Home, report: Report) -> None:
    """Each cached .deb must hash to its name: locked bakes trust the cache."""
    for path in sorted(home.debs.glob("*.deb")) if home.debs.is_dir() else []:
        actual = file_sha256(path)
        if actual != path.stem:
            report.faults.append(
                f"cached package {path.name} is corrupt: its content hashes to {actual} "
                "(delete it; the next locked bake fetches it again)"
            )


def _check_layout_files(layout: Layout, report: Report) -> None:
    try:
        marker = json.loads((layout.root / "oci-layout").read_bytes())
        if marker.get("imageLayoutVersion") != "1.0.0":
            report.faults.append("oci-layout does not say imageLayoutVersion 1.0.0")
    except (OSError, ValueError) as exc:
        report.faults.append(f"oci-layout is missing or unreadable: {exc}")
    try:
        json.loads((layout.root / "index.json").read_bytes())
    except (OSError, ValueError) as exc:
        report.faults.append(f"index.json is missing or unreadable: {exc}")


def _check_blob(
    digest: str, size: int | None, what: str, layout: Layout, good: set[str], report: Report
) -> bool:
    path = layout.blob_path(digest)
    if not path.is_file():
        report.faults.append(f"{what}: blob {digest} is missing")
        return False
    if size is not None and path.stat().st_size != size:
        report.faults.append(
            f"{what}: blob {digest} is {path.stat().st_size} bytes, its descriptor says {size}"
        )
        return False
    return digest in good


def _check_referrer(
    layout: Layout, entry: dict[str, Any], tagged: set[str], good: set[str], report: Report
) -> set[str]:
    """An artefact (provenance, SBOM) listed in index.json: blobs present, subject known."""
    annotations = entry.get("annotations") or {}
    what = f"{annotations.get(KIND, 'artefact')} {entry['digest'][7:19]}"
    used = {entry["digest"]}
    if not _check_blob(entry["digest"], entry.get("size"), what, layout, good, report):
        return used
    manifest = layout.read_json(entry["digest"])
    for blob in [manifest.get("config", {}), *manifest.get("layers", [])]:
        used.add(blob.get("digest", ""))
        _check_blob(blob.get("digest", ""), blob.get("size"), what, layout, good, report)
    subject = (manifest.get("subject") or {}).get("digest")
    if subject not in tagged:
        report.faults.append(f"{what}: its subject {subject} is not an image in index.json")
    return used


def _diff_id_of(layout: Layout, blob: Descriptor) -> str | None:
    """What a compressed layer blob decompresses to (sha256 of the tar), None if it does not."""
    fd = os.open(layout.blob_path(blob.digest), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as source:
        return read_stream(source, blob, lambda _chunk: None).diff_id


def _check_image(
    home: Home,
    layout: Layout,
    ref: str,
    manifest_blob: tuple[str, int],
    good: set[str],
    unpacks_to: dict[str, str | None],
    report: Report,
) -> set[str]:
    digest, size = manifest_blob
    used = {digest}
    if not _check_blob(digest, size, f"{ref} manifest", layout, good, report):
        return used
    manifest = layout.read_json(digest)
    if manifest.get("mediaType") != MEDIA_MANIFEST:
        report.faults.append(f"{ref}: manifest has media type {manifest.get('mediaType')!r}")
    config_desc = manifest.get("config", {})
    used.add(config_desc.get("digest", ""))
    layers = manifest.get("layers", [])
    used |= {layer["digest"] for layer in layers}
    if not _check_blob(
        config_desc["digest"], config_desc.get("size"), f"{ref} config", layout, good, report
    ):
        return used
    config = layout.read_json(config_desc["digest"])
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(layers):
        report.faults.append(f"{ref}: {len(layers)} layers but {len(diff_ids)} diff_ids")
    for number, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=False)):
        what = f"{ref} layer {number}"
        intact = _check_blob(layer["digest"], layer.get("size"), what, layout, good, report)
        media_type = layer.get("mediaType")
        if media_type not in MEDIA_TYPES:
            report.faults.append(
                f"{what}: blob {layer['digest']} has media type {media_type!r}, "
                "not a tar layer kiln can unpack"
            )
        elif media_type == MEDIA_LAYER:
            if layer["digest"] != diff_id:
                report.faults.append(
                    f"{what}: uncompressed layer {layer['digest']} but diff_id {diff_id}"
                )
        elif intact:  # compressed: the diff_id is what it decompresses to
            blob = Descriptor.from_json(layer)
            if blob.digest not in unpacks_to:
                unpacks_to[blob.digest] = _diff_id_of(layout, blob)
            found = unpacks_to[blob.digest]
            if found is None:
                report.faults.append(
                    f"{what}: blob {blob.digest} ({media_type}) does not decompress"
                )
            elif found != diff_id:
                report.faults.append(
                    f"{what}: blob {blob.digest} decompresses to {found}, but its diff_id "
                    f"is {diff_id}"
                )
        if not (home.layers / diff_id.split(":", 1)[1]).is_dir():
            report.notes.append(f"{what} is not unpacked under layers/ (done on next use)")
    return used
