"""The one image resolver: the catalog says which image a ref names, the store gives its
bytes. Every command that takes a ref (bake parents, run, test, inspect, lineage, diff,
export) comes here, so an image the catalog does not list as usable is never used."""

from __future__ import annotations

from kiln import refs
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import ImageRow
from kiln.store import stored
from kiln.store.stored import StoredImage


def image(workspace: Workspace, ref: str | refs.Ref) -> ImageRow:
    """The catalog's image for ``ref`` (BadInput for a malformed ref, NotFound if none)."""
    parsed = refs.parse(ref) if isinstance(ref, str) else ref
    return workspace.lookup.image(parsed)


def load(workspace: Workspace, row: ImageRow) -> StoredImage:
    """The image's manifest, config and unpacked layers, checked against the store."""
    return stored.load(workspace.home, workspace.layout, row.ref, row.digest)


def image_and_bytes(workspace: Workspace, ref: str | refs.Ref) -> tuple[ImageRow, StoredImage]:
    row = image(workspace, ref)
    return row, load(workspace, row)
