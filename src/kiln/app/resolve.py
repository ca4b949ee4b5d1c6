"""The one image resolver: the catalog says which image a ref names, the store gives its
bytes. Every command that takes a ref (bake parents, run, start, test, promote, inspect,
lineage, diff, export, where) comes here, so an image the catalog does not list as usable
is never used.

A ref is ``name`` (the newest version not revoked), ``name:3``, ``name@sha256:...`` or a
channel, ``name:prod`` (what the channel points at). ``usable`` (the default) refuses an
image that is revoked, itself or through an ancestor (kiln.catalog.lookup.Revoked, exit
1): what launches, bakes on or promotes an image asks for that; inspect, lineage, diff
and where only look, and pass ``usable=False``.
"""

from __future__ import annotations

from kiln import refs
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import ImageRow
from kiln.store import stored
from kiln.store.stored import StoredImage


def image(workspace: Workspace, ref: str | refs.Ref, usable: bool = True) -> ImageRow:
    """The catalog's image for ``ref`` (BadInput for a malformed ref, NotFound if none,
    Revoked if ``usable`` and it is revoked)."""
    parsed = refs.parse(ref) if isinstance(ref, str) else ref
    return workspace.lookup.image(parsed, usable=usable)


def load(workspace: Workspace, row: ImageRow) -> StoredImage:
    """The image's manifest, config and unpacked layers, checked against the store; pulled
    first when another store sharing the catalog holds it (kiln.app.elsewhere)."""
    if not workspace.layout.has_blob(row.digest):
        from kiln.app import elsewhere

        elsewhere.fetch(workspace, row)
    return stored.load(workspace.home, workspace.layout, row.ref, row.digest)


def image_and_bytes(
    workspace: Workspace, ref: str | refs.Ref, usable: bool = True
) -> tuple[ImageRow, StoredImage]:
    row = image(workspace, ref, usable)
    return row, load(workspace, row)
