"""Read-side services over store and catalog: inspect, lineage, diff, export, fsck, gc.

Each function opens what it needs, returns plain data (what ``--json`` prints), and leaves
rendering to the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from kiln.bake import root
from kiln.bake.service import load_image, open_store
from kiln.catalog import Catalog, Image
from kiln.catalog.db import PENDING
from kiln.catalog.machines import latest_test_runs
from kiln.errors import NotFound
from kiln.home import Home
from kiln.recipe import lockfile
from kiln.recipe.lockfile import Deb
from kiln.store import export, fsck, gc, tree
from kiln.store.layout import Descriptor, Layout


@dataclass
class Store:
    home: Home
    layout: Layout
    catalog: Catalog
    session: Session


@contextmanager
def opened(home: Home | None = None) -> Iterator[Store]:
    home = home or Home.from_env()
    layout, catalog = open_store(home)
    try:
        with catalog.reading() as session:
            yield Store(home, layout, catalog, session)
    finally:
        catalog.close()


def _summary(image: Image) -> dict[str, Any]:
    return {"ref": image.ref, "digest": image.digest, "created": image.created.isoformat()}


def inspect(ref: str, home: Home | None = None) -> dict[str, Any]:
    with opened(home) as store:
        image = store.catalog.resolve(store.session, ref)
        manifest = store.layout.read_json(image.digest)
        config = store.layout.read_json(manifest["config"]["digest"])
        labels = (config.get("config") or {}).get("Labels") or {}
        history = [h for h in config.get("history", []) if not h.get("empty_layer")]
        layers = []
        for number, layer in enumerate(manifest["layers"]):
            step = history[number] if number < len(history) else {}
            layers.append(
                {
                    "digest": layer["digest"],
                    "size": layer["size"],
                    "media_type": layer["mediaType"],
                    "diff_id": config["rootfs"]["diff_ids"][number],
                    "created_by": step.get("created_by", ""),
                    "comment": step.get("comment", ""),
                }
            )
        return {
            "ref": image.ref,
            "name": image.name,
            "version": image.version,
            "digest": image.digest,
            "config_digest": image.config_digest,
            "status": image.status,
            "origin": image.origin,
            "created": image.created.isoformat(),
            "cache_key": image.cache_key,
            "recipe": {"path": image.recipe_path, "digest": f"sha256:{image.recipe_digest}"},
            "bake_seconds": round(image.seconds, 3),
            "labels": labels,
            "seal": json.loads(labels.get("org.kiln.seal", "[]")),
            "architecture": config.get("architecture"),
            "os": config.get("os"),
            "env": (config.get("config") or {}).get("Env") or [],
            "layers": layers,
            "size": sum(layer["size"] for layer in layers),
            "parents": [_summary(parent) for parent in store.catalog.ancestors(image)],
            "packages": [
                {
                    "name": p.name,
                    "version": p.version,
                    "architecture": p.architecture,
                    "sha256": p.sha256,
                }
                for p in image.packages
            ],
            "artefacts": [
                {
                    "kind": a.kind,
                    "media_type": a.media_type,
                    "digest": a.digest,
                    "manifest": a.manifest_digest,
                }
                for a in image.artefacts
            ],
            "tests": [run.to_json() for run in latest_test_runs(store.session, image.id)],
        }


def document(ref: str, kind: str, home: Home | None = None) -> Any:
    """An image's provenance or SBOM, parsed."""
    with opened(home) as store:
        image = store.catalog.resolve(store.session, ref)
        for artefact in image.artefacts:
            if artefact.kind == kind:
                return json.loads(store.layout.read_bytes(artefact.digest))
        raise NotFound(
            f"{image.ref} has no {kind}",
            hint="images baked before kiln recorded it have none; rebake with --no-cache",
        )


def _descendants(image: Image) -> list[dict[str, Any]]:
    return [
        {**_summary(child), "children": _descendants(child)}
        for child in sorted(image.children, key=lambda c: (c.name, c.version))
        if child.status != PENDING
    ]


def lineage(ref: str, home: Home | None = None) -> dict[str, Any]:
    with opened(home) as store:
        image = store.catalog.resolve(store.session, ref)
        return {
            **_summary(image),
            "ancestors": [_summary(a) for a in store.catalog.ancestors(image)],
            "descendants": _descendants(image),
        }


def diff(old_ref: str, new_ref: str, home: Home | None = None) -> dict[str, Any]:
    with opened(home) as store:
        old = store.catalog.resolve(store.session, old_ref)
        new = store.catalog.resolve(store.session, new_ref)
        old_dirs = load_image(store.home, store.layout, old).layer_dirs
        new_dirs = load_image(store.home, store.layout, new).layer_dirs
        files = tree.diff(old_dirs, new_dirs)
        packages = lockfile.diff(_debs(old), _debs(new)).to_json()
        return {
            "old": old.ref,
            "new": new.ref,
            "files": {"added": files.added, "modified": files.modified, "deleted": files.deleted},
            "packages": {
                "added": packages["added"],
                "removed": packages["removed"],
                "changed": packages["changed"],
            },
        }


def _debs(image: Image) -> list[Deb]:
    return [Deb(p.name, p.architecture, p.version, p.sha256) for p in image.packages]


def export_image(ref: str, kind: str, output: Path, home: Home | None = None) -> str:
    with opened(home) as store:
        image = store.catalog.resolve(store.session, ref)
        if kind == "oci-archive":
            size = len(store.layout.read_bytes(image.digest))
            manifest = Descriptor("application/vnd.oci.image.manifest.v1+json", image.digest, size)
            export.oci_archive(store.layout, manifest, image.ref, output, store.home.tmp)
        else:
            dirs = load_image(store.home, store.layout, image).layer_dirs
            export.rootfs_tar(dirs, output, store.home.tmp)
        return image.ref


def check(home: Home | None = None) -> fsck.Report:
    home = home or Home.from_env()
    layout, catalog = open_store(home)
    try:
        return fsck.check(home, layout, catalog)
    finally:
        catalog.close()


def collect_garbage(home: Home | None = None, dry_run: bool = False) -> gc.Report:
    """`kiln gc`: what dead kiln processes left, and bytes no image refers to.

    Build folders and ``tmp/`` entries nobody holds go first (with the processes still
    working in them and their mounts). Then, with the store lock held exclusively (no
    bake is between capture and tag): catalog rows of unfinished bakes with their tags,
    then blobs, referrer entries and unpacked layers that no image reaches.
    """
    home = home or Home.from_env()
    layout, catalog = open_store(home)
    report = gc.Report(dry_run)
    try:
        report.items += root.sweep_owned(home.builds, "build", dry_run)
        report.items += root.sweep_owned(home.tmp, "tmp", dry_run)
        with gc.store_sweep(home):
            report.items += _take_back_pending(layout, catalog, dry_run)
            report.items += gc.sweep_store(home, layout, dry_run)
        gc.sweep_bake_locks(home, dry_run)  # tiny files, not worth a line in the report
    finally:
        catalog.close()
    return report


def _take_back_pending(layout: Layout, catalog: Catalog, dry_run: bool) -> list[gc.Item]:
    """Rows of bakes that died between taking a version and finishing: with the sweep
    lock held, no live bake on this store is in that window."""
    out = []
    with catalog.session() as session:
        for image in catalog.pending(session):
            out.append(gc.Item("image", image.ref, 0))
            if dry_run:
                continue
            layout.untag(image.ref, digest=image.digest)  # its referrers go in the sweep
            session.delete(image)
    return out
