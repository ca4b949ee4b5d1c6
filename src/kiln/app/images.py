"""The read side of the store and catalog: images, inspect, lineage, diff, export, fsck
(gc is kiln.app.gc).

Each use case takes the process's Workspace, resolves refs through the one resolver, and
returns plain data (what ``--json`` prints), leaving rendering to the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kiln.app import resolve, stores, trace
from kiln.app.workspace import Workspace
from kiln.catalog import Catalog, Image, holdings
from kiln.catalog.lookup import PackageRow
from kiln.catalog.machines import latest_test_runs
from kiln.catalog.revisions import OK, PENDING
from kiln.catalog.session import Session
from kiln.errors import NotFound
from kiln.recipe import lockfile
from kiln.recipe.lockfile import Deb
from kiln.store import export, fsck, tree
from kiln.store.fsck import CatalogRows, Elsewhere
from kiln.store.layout import MEDIA_MANIFEST, Descriptor


@contextmanager
def _reading(workspace: Workspace, ref: str) -> Iterator[tuple[Session, Image]]:
    """The catalog row ``ref`` resolves to, with its relations, in a read transaction (a
    revoked image too: these commands only look)."""
    row = resolve.image(workspace, ref, usable=False)
    with workspace.catalog.reading() as session:
        image = session.get(Image, row.id)
        assert image is not None
        yield session, image


def list_images(workspace: Workspace) -> list[dict[str, Any]]:
    """Every image version in the catalog, each with the revocation in force on it and
    the places holding its bytes (``stores``: this store, others sharing the catalog,
    registries), and every version kiln gc removed (``status`` "removed"), by name then
    version."""
    from kiln.catalog import removed

    catalog, lookup = workspace.catalog, workspace.lookup
    revoked = lookup.revoked_images()
    with catalog.reading() as session:
        places = stores.Places(stores.here(workspace), holdings.all_holders(session))
        rows = [
            {
                "ref": i.ref,
                "name": i.name,
                "version": i.version,
                "digest": i.digest,
                "parent": i.parent.ref if i.parent else None,
                "origin": i.origin,
                "created": i.created.isoformat(),
                "size": i.size,
                "status": i.status,
                "packages": len(i.packages),
                "revoked": revoked[i.id].to_json() if i.id in revoked else None,
                "removed": None,
                "stores": places.stores_json(i.id),
            }
            for i in catalog.all_images(session)
        ]
    listed = {row["ref"] for row in rows}
    for gone in removed.gone(lookup, None).versions:
        if gone.ref in listed:
            continue
        listed.add(gone.ref)
        name, _, version = gone.ref.rpartition(":")
        rows.append(
            {
                "ref": gone.ref,
                "name": name,
                "version": int(version),
                "digest": gone.digest,
                "parent": None,
                "origin": None,
                "created": None,
                "size": None,
                "status": "removed",
                "packages": None,
                "revoked": None,
                "removed": gone.to_json(),
                "stores": [],
            }
        )
    return sorted(rows, key=lambda row: (row["name"], row["version"]))


def _summary(image: Image) -> dict[str, Any]:
    return {"ref": image.ref, "digest": image.digest, "created": image.created.isoformat()}


def inspect(workspace: Workspace, ref: str) -> dict[str, Any]:
    layout = workspace.layout
    with _reading(workspace, ref) as (session, image):
        manifest = layout.read_json(image.digest)
        config = layout.read_json(manifest["config"]["digest"])
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
            "parents": [_summary(parent) for parent in Catalog.ancestors(image)],
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
            "tests": [run.to_json() for run in latest_test_runs(session, image.id)],
            **trace.about(workspace, image.id, image.name, image.digest),
        }


def document(workspace: Workspace, ref: str, kind: str) -> Any:
    """An image's provenance or SBOM, parsed."""
    with _reading(workspace, ref) as (_session, image):
        for artefact in image.artefacts:
            if artefact.kind == kind:
                return json.loads(workspace.layout.read_bytes(artefact.digest))
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


def lineage(workspace: Workspace, ref: str) -> dict[str, Any]:
    with _reading(workspace, ref) as (_session, image):
        return {
            **_summary(image),
            "ancestors": [_summary(a) for a in Catalog.ancestors(image)],
            "descendants": _descendants(image),
            **trace.about(workspace, image.id, image.name, image.digest),
        }


def diff(workspace: Workspace, old_ref: str, new_ref: str) -> dict[str, Any]:
    old, old_image = resolve.image_and_bytes(workspace, old_ref, usable=False)
    new, new_image = resolve.image_and_bytes(workspace, new_ref, usable=False)
    files = tree.diff(old_image.layer_dirs, new_image.layer_dirs)
    lookup = workspace.lookup
    packages = lockfile.diff(_debs(lookup.packages(old.id)), _debs(lookup.packages(new.id)))
    changed = packages.to_json()
    return {
        "old": old.ref,
        "new": new.ref,
        "files": {"added": files.added, "modified": files.modified, "deleted": files.deleted},
        "packages": {key: changed[key] for key in ("added", "removed", "changed")},
    }


def _debs(rows: list[PackageRow]) -> list[Deb]:
    return [Deb(p.name, p.architecture, p.version, p.sha256) for p in rows]


def export_image(workspace: Workspace, ref: str, kind: str, output: Path) -> str:
    row = resolve.image(workspace, ref)
    layout, tmp = workspace.layout, workspace.home.tmp
    if kind == "oci-archive":
        manifest = Descriptor(MEDIA_MANIFEST, row.digest, len(layout.read_bytes(row.digest)))
        export.oci_archive(layout, manifest, row.ref, output, tmp)
    else:
        export.rootfs_tar(resolve.load(workspace, row).layer_dirs, output, tmp)
    return row.ref


def check(workspace: Workspace, deep: bool = False) -> fsck.Report:
    """`kiln fsck`: this store's bytes against the catalog rows it holds (after claiming
    those it has the bytes of and no holding says so: kiln.app.stores); the rows only
    other places hold are listed, not checked."""
    catalog = workspace.catalog
    here = stores.claim(workspace).here
    rest: Elsewhere = {}

    def rows() -> CatalogRows:
        mine: CatalogRows = {}
        rest.clear()
        with catalog.reading() as session:
            places = stores.Places(here, holdings.all_holders(session))
            for image in catalog.all_images(session, pending=True):
                if image.status not in (OK, PENDING):
                    continue
                if places.mine(image.id):
                    mine[image.ref] = (image.status == OK, image.digest)
                else:
                    held = [stores.description(h) for h in places.held.get(image.id, [])]
                    rest[image.ref] = ", ".join(held) or "no store"
        return mine

    def elsewhere() -> Elsewhere:
        return dict(rest)

    return fsck.check(workspace.home, workspace.layout, rows, deep, elsewhere)
