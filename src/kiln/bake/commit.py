"""The end of a bake: the image's config, manifest and referrers written, its layer kept,
its version taken in the catalog and tagged in the store.

The version is taken by a pending row first, then the store is tagged, then the row is
marked ok: a bake killed in between leaves nothing the catalog and the store disagree
about (kiln gc removes a pending row with its tag and blobs).
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kiln.bake import again, image, source
from kiln.bake.context import BuildContext
from kiln.bake.image import Checks, Special
from kiln.bake.result import BakeResult
from kiln.catalog import baking, versions
from kiln.catalog.baking import ArtefactFields, NewVersion
from kiln.catalog.holdings import Holder
from kiln.digests import canonical_json
from kiln.errors import KilnError
from kiln.recipe import lockfile
from kiln.recipe.limits import MAX_LOCK_BYTES, read_regular
from kiln.recipe.lockfile import Deb, Lock
from kiln.store import archive, artefacts, inventory
from kiln.store.layout import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor
from kiln.times import rfc3339


@dataclass(frozen=True)
class Built:
    """What the stages made of the root, for the image's config, provenance and SBOM."""

    packages: list[Deb]  # what the image holds (kiln.bake.packages.record)
    distro: str | None  # e.g. debian-bookworm, for package URLs
    seal_checks: Checks
    special: Special | None  # an imported base's device nodes and setuid/setgid files


def _move_layer(context: BuildContext, diff_id: str) -> None:
    """Keep the unpacked layer (overlay form) under layers/<hex> for later stacking."""
    target = context.home.layers / diff_id.split(":", 1)[1]
    if target.exists():
        return
    try:
        os.replace(context.layer_source, target)
    except OSError as exc:
        # a bake of the same layer moved its copy in first: keep that one
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise


def _artefacts(
    context: BuildContext,
    built: Built,
    ref: str,
    version: int,
    manifest: Descriptor,
    layer: Descriptor,
    stamped: datetime,
) -> list[tuple[Descriptor, ArtefactFields]]:
    """Provenance, SBOM and the layers' file inventories, stored as referrers of the image
    manifest."""
    # cyclonedx is slow to import; a cache hit never needs it
    from kiln.bake import provenance, sbom

    finished = datetime.now(UTC)
    documents = [
        (
            "provenance",
            provenance.MEDIA_TYPE,
            canonical_json(
                provenance.statement(
                    context, built.packages, ref, manifest.digest, layer.digest, finished
                )
            ),
        ),
        (
            "sbom",
            sbom.MEDIA_TYPE,
            sbom.sbom(
                context.recipe.name,
                version,
                manifest.digest,
                built.packages,
                stamped,
                built.distro,
            ).encode(),
        ),
    ]
    lock = _lock_text(context, built.packages)
    if lock is not None:  # and what a proof rebuilds from with it (kiln.bake.source)
        documents.append((artefacts.LOCK, artefacts.MEDIA_LOCK, lock))
        kept = source.pack(context.recipe, list(context.materials), context.home.tmp)
        if kept is not None:
            documents.append((archive.KIND, archive.MEDIA_TYPE, kept))
    out = []
    created = rfc3339(stamped)
    for kind, media_type, data in documents:
        descriptor = artefacts.put(context.layout, manifest, kind, media_type, data, created)
        blob = context.layout.read_json(descriptor.digest)["layers"][0]["digest"]
        out.append((descriptor, (kind, media_type, descriptor.digest, blob)))
    parent = context.parent.manifest.digest if context.parent else None
    files, top = inventory.attach(context.layout, context.home.layers, manifest, parent, created)
    kind, media_type = inventory.ARTEFACT, inventory.MEDIA_TYPE
    out.append((files, (kind, media_type, files.digest, top)))
    return out


def _lock_text(context: BuildContext, packages: list[Deb]) -> bytes | None:
    """The lock the image was baked from, kept so it can be rebuilt from it later: the lock
    file's own bytes, or for an unlocked bake the lock its packages resolved to. None when
    a package's .deb was never seen (an imported base): such an image has no lock."""
    lock = context.lock
    if lock is not None and not lockfile.lock_path(context.recipe.path).is_file():
        return lock.render(context.recipe.path.name).encode()  # handed over, not read (a proof)
    if lock is not None:
        path = lockfile.lock_path(context.recipe.path)
        data = read_regular(path, MAX_LOCK_BYTES, "lock file")
        if hashlib.sha256(data).hexdigest() != lock.digest:
            raise KilnError(
                f"{path} changed while {context.recipe.name} was being baked from it",
                hint="bake again",
            )
        return data
    if context.source_date_epoch is None or not all(d.sha256 for d in packages):
        return None
    parent = context.parent.manifest.digest if context.parent else None
    resolved = Lock(parent, context.source_date_epoch, tuple(sorted(packages)))
    return resolved.render(context.recipe.path.name).encode()


def commit(
    context: BuildContext, built: Built, layer: Descriptor, diff_id: str, seconds: float
) -> BakeResult:
    """Write config and manifest, keep the layer, then record and tag (``seconds``: how
    long the bake took until now).

    The version is taken first by a catalog row marked pending; then the artefacts are
    written and the image is tagged in the store; then the row is marked ok. A bake killed
    in between leaves a pending row (never shown as an image; ``kiln gc`` removes it, with
    its tag and blobs), never an image the catalog and the store disagree about.
    """
    created = datetime.now(UTC).replace(microsecond=0)
    stamped = created  # what the image says: the lock's SOURCE_DATE_EPOCH when reproducible
    if context.source_date_epoch is not None:
        stamped = datetime.fromtimestamp(context.source_date_epoch, UTC)
    config = image.config(context, diff_id, stamped, built.seal_checks, built.special)
    config_desc = context.layout.put_json(config, MEDIA_CONFIG)
    manifest_desc = context.layout.put_json(
        image.manifest(context, config_desc, layer), MEDIA_MANIFEST
    )
    _move_layer(context, diff_id)
    recipe = context.recipe
    held = versions.holding(context.catalog.lookup(), recipe.name, manifest_desc.digest)
    if held:  # a rebuild (--no-cache) that reproduced a version: no second copy of it
        parent = context.parent
        made_on = (context.parent_id, parent.ref) if parent and context.parent_id else None
        return again.settle(
            context.catalog,
            context.layout,
            recipe,
            made_on,
            held[0],
            context.cache_key,
            time.monotonic() - seconds,
            cached=False,
            holder=Holder.of(context.home),
        )

    new = NewVersion(
        name=recipe.name,
        digest=manifest_desc.digest,
        config_digest=config_desc.digest,
        parent_id=context.parent_id,
        cache_key=context.cache_key,
        recipe_path=str(recipe.path),
        recipe_digest=recipe.digest,
        origin=recipe.recipe.image.origin,
        created=created,
        size=layer.size,
        seconds=seconds,
        packages=[(d.name, d.version, d.architecture, d.sha256) for d in built.packages],
    )
    image_id, version = baking.take_version(context.catalog, new, Holder.of(context.home))
    ref = f"{recipe.name}:{version}"
    referrers: list[Descriptor] = []
    tagged = False
    try:
        artefacts = _artefacts(context, built, ref, version, manifest_desc, layer, stamped)
        referrers = [descriptor for descriptor, _row in artefacts]
        context.layout.tag(ref, manifest_desc, referrers)
        tagged = True
        baking.confirm(
            context.catalog,
            image_id,
            ref,
            [artefact for _descriptor, artefact in artefacts],
            parent=context.parent.ref if context.parent else None,
            parent_named=recipe.recipe.image.parent,  # as written: base:prod, base.toml
            cache_key=context.cache_key,
        )
    except BaseException:
        _take_back(context, image_id, ref, manifest_desc.digest, referrers if tagged else None)
        raise
    return BakeResult(
        name=recipe.name,
        version=version,
        digest=manifest_desc.digest,
        cache_key=context.cache_key,
        cached=False,
        seconds=0.0,
        recipe=str(recipe.path),
    )


def _take_back(
    context: BuildContext,
    image_id: int,
    ref: str,
    digest: str,
    referrers: list[Descriptor] | None,
) -> None:
    """Undo a commit that did not finish, as far as possible (kiln gc does the rest)."""
    try:
        if referrers is not None:  # the catalog did not take it: the store must not name it
            context.layout.untag(ref, referrers, digest=digest)
        baking.take_back(context.catalog, image_id)
    except (KilnError, OSError) as exc:
        context.log(f"could not take back {ref}: {exc} (kiln gc removes it)")
