"""A bake whose result is the bytes of a version its name already has.

That happens two ways: a cache hit whose key names an older version (a lock moved back
to the exact lock of ``base:2`` while ``base:3`` is the newest), and a ``--no-cache``
rebuild that reproduced an existing version byte for byte. The rule is one for both:

- the bytes are the newest usable version already: nothing is added, the bake answers
  with that version (``--no-cache`` says it made the same bytes);
- they are an older version's: a new version is added with the same manifest digest
  (``base:4``, the bytes of ``base:2``), on the parent this bake was made on, so the
  name's newest version is what the recipe makes now and whatever follows the name
  (``kiln propagate``, ``kiln refresh``, channels promoted from it) follows it;
- any version holding those bytes is revoked: the bake is refused (exit 1), so no
  bake brings revoked bytes back under another number.

The new version shares the manifest, its layers and its referrers (lock, provenance,
SBOM, source archive, signatures): only a tag and a catalog row are written, the same way
a bake commits (a pending row first, then the tag, then the row marked ok, with a
``baked`` event that names the version it repeats).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kiln import refs
from kiln.bake.result import BakeResult
from kiln.catalog import versions
from kiln.catalog.lookup import ImageRow, Lookup, Revoked, revoked_hint
from kiln.errors import KilnError
from kiln.store.layout import MEDIA_MANIFEST, Descriptor, Layout

if TYPE_CHECKING:
    from kiln.catalog import Catalog
    from kiln.catalog.holdings import Holder
    from kiln.recipe import RecipeFile


def _refuse_revoked(lookup: Lookup, name: str, digest: str) -> None:
    found = versions.revoked_holder(lookup, name, digest)
    if found is not None:
        row, revocation = found
        raise Revoked(
            f"these inputs make the bytes of {row.ref} ({digest[:19]}), and "
            + revocation.describe(row.ref),
            hint=revoked_hint(revocation),
        )


def current(lookup: Lookup, hit: ImageRow) -> ImageRow | None:
    """The name's newest usable version when it holds ``hit``'s bytes, else None (they
    are an older version's). Refused (Revoked) when any version holding them is revoked."""
    _refuse_revoked(lookup, hit.name, hit.digest)
    newest = lookup.image(refs.Ref(hit.name))
    return newest if newest.digest == hit.digest else None


def result(row: ImageRow, key: str, recipe: str, seconds: float, cached: bool) -> BakeResult:
    """The answer of a bake whose result is ``row``, the newest version already: a cache
    hit (the full path's or the quick path's), or a rebuild that made its bytes again."""
    return BakeResult(
        name=row.name,
        version=row.version,
        digest=row.digest,
        cache_key=key,
        cached=cached,
        seconds=seconds,
        recipe=recipe,
        same_as="" if cached else row.ref,
    )


def settle(
    catalog: Catalog,
    layout: Layout,
    recipe: RecipeFile,
    parent: tuple[int, str] | None,
    held: ImageRow,
    key: str,
    started: float,
    cached: bool,
    holder: Holder | None = None,
) -> BakeResult:
    """The bake's answer when its result is ``held``'s bytes (``parent``: the id and ref
    of the parent row it was made on; ``cached``: a cache hit, else a build that
    reproduced them; ``holder``: the bake's store, which holds a new version's row).
    The caller holds the bake's cache-key lock."""
    lookup = catalog.lookup()
    newest = current(lookup, held)
    if newest is not None:
        return result(newest, key, str(recipe.path), time.monotonic() - started, cached)
    return _again(catalog, layout, recipe, parent, held, key, started, cached, holder)


def _manifest(layout: Layout, held: ImageRow) -> Descriptor:
    found = layout.refs().get(held.ref)
    if found is not None and found.digest == held.digest:
        return found
    return Descriptor(MEDIA_MANIFEST, held.digest, layout.blob_path(held.digest).stat().st_size)


def _again(
    catalog: Catalog,
    layout: Layout,
    recipe: RecipeFile,
    parent: tuple[int, str] | None,
    held: ImageRow,
    key: str,
    started: float,
    cached: bool,
    holder: Holder | None,
) -> BakeResult:
    """A new version of ``held``'s name with its bytes, committed as a bake commits."""
    from kiln.catalog import baking

    manifest = _manifest(layout, held)
    source = baking.copied(catalog, held.id, held.ref)
    new = baking.NewVersion(
        name=held.name,
        digest=held.digest,
        config_digest=held.config_digest,
        parent_id=parent[0] if parent else None,
        cache_key=key,
        recipe_path=str(recipe.path),
        recipe_digest=held.recipe_digest,  # what the bytes (and their archive) came from
        origin=source.origin,
        created=datetime.now(UTC).replace(microsecond=0),
        size=source.size,
        seconds=source.seconds,
        packages=source.packages,
    )
    image_id, version = baking.take_version(catalog, new, holder)
    ref = f"{held.name}:{version}"
    tagged = False
    try:
        layout.tag(ref, manifest)  # its referrers are listed already, by their subject
        tagged = True
        baking.confirm(
            catalog,
            image_id,
            ref,
            source.artefacts,
            parent=parent[1] if parent else None,
            parent_named=recipe.recipe.image.parent,
            cache_key=key,
            again_of=held.ref,
            cached=cached,
        )
    except BaseException:
        try:
            if tagged:
                layout.untag(ref, digest=held.digest)
            baking.take_back(catalog, image_id)
        except (KilnError, OSError):
            pass  # kiln gc removes a pending row and its tag
        raise
    return BakeResult(
        name=held.name,
        version=version,
        digest=held.digest,
        cache_key=key,
        cached=cached,
        seconds=time.monotonic() - started,
        recipe=str(recipe.path),
        again_of=held.ref,
    )
