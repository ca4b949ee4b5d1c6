"""`kiln bake`: plan, then for each recipe either reuse the cached image or build it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.orm import Session

from kiln import locks
from kiln.bake import build, cachekey
from kiln.bake.bases import debian
from kiln.bake.context import BuildContext, Options, StoredImage
from kiln.bake.plan import parent_recipe, plan
from kiln.catalog import Catalog, Image
from kiln.errors import BadInput
from kiln.home import Home
from kiln.recipe import RecipeFile, lockfile
from kiln.recipe.lockfile import Deb
from kiln.store import unpacked
from kiln.store.layout import Descriptor, Layout


def open_store(home: Home) -> tuple[Layout, Catalog]:
    home.ensure()
    layout = Layout(home.oci, tmp=home.tmp)
    layout.init()
    return layout, Catalog(home.catalog_url)


def load_image(home: Home, layout: Layout, image: Image) -> StoredImage:
    """A catalog image as a parent: its config, and its layers unpacked once in the store."""
    manifest = Descriptor.from_json(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest,
            "size": len(layout.read_bytes(image.digest)),
        }
    )
    manifest_json = layout.read_json(image.digest)
    config = layout.read_json(manifest_json["config"]["digest"])
    dirs = [
        unpacked.ensure(
            home, layout, Descriptor.from_json(blob), diff_id, f"{image.ref} layer {number}"
        )
        for number, (blob, diff_id) in enumerate(
            zip(manifest_json["layers"], config["rootfs"]["diff_ids"], strict=True)
        )
    ]
    return StoredImage(
        ref=image.ref, catalog_id=image.id, manifest=manifest, config=config, layer_dirs=tuple(dirs)
    )


def bake_one(
    home: Home,
    layout: Layout,
    catalog: Catalog,
    recipe: RecipeFile,
    parent_ref: str | None,
    options: Options,
    log: Callable[[str], None],
) -> build.BakeResult:
    started = time.monotonic()
    lock_file = lockfile.lock_path(recipe.path)
    lock = None if options.ignore_lock or not lock_file.is_file() else lockfile.parse(lock_file)
    with catalog.reading() as session:
        parent, parent_packages = _parent(home, layout, catalog, session, recipe, parent_ref)
        parent_digest = parent.manifest.digest if parent else None
        why = (
            None
            if lock is None
            else lockfile.stale(lock, recipe.recipe.packages.apt, parent_digest)
        )
        if why is not None:
            raise BadInput(
                f"{lock_file} is stale: {why}",
                hint=f"re-resolve it: kiln lock {recipe.path}",
            )
        spec = recipe.recipe.image.bootstrap
        key = cachekey.compute(
            recipe,
            parent_digest,
            use_lock=lock is not None,
            sources=debian.sources(spec, options.mirror) if spec is not None else None,
        )
        hit = _cached(catalog, layout, session, recipe, key, options, started)
        if hit is not None:
            return hit
    # One bake per cache key at a time: a second bake of the same inputs waits here, then
    # finds the first one's image. Bakes of other inputs run side by side.
    key_lock = home.locks / f"bake-{key}.lock"
    key_lock.parent.mkdir(parents=True, exist_ok=True)
    held_key = locks.hold(key_lock, wait=False)
    if held_key is None:
        log(f"{recipe.name}: waiting for another bake of the same inputs")
        held_key = locks.hold(key_lock)
    assert held_key is not None
    with held_key:
        with catalog.reading() as session:
            hit = _cached(catalog, layout, session, recipe, key, options, started)
        if hit is not None:
            return hit
        build_dir, held = locks.owned_dir(home.builds, f"{recipe.name}-")
        with held:  # released when the bake is over: then the folder is gone or kept
            context = BuildContext(
                home=home,
                layout=layout,
                catalog=catalog,
                recipe=recipe,
                options=options,
                cache_key=key,
                parent=parent,
                build_dir=build_dir,
                log=lambda message: log(f"{recipe.name}: {message}"),
            )
            context.parent_packages = parent_packages
            context.lock = lock
            context.source_date_epoch = (
                lock.source_date_epoch
                if lock is not None
                else recipe.recipe.image.source_date_epoch
            )
            return build.bake(context)


def _parent(
    home: Home,
    layout: Layout,
    catalog: Catalog,
    session: Session,
    recipe: RecipeFile,
    parent_ref: str | None,
) -> tuple[StoredImage | None, list[Deb]]:
    ref = parent_ref or recipe.recipe.image.parent
    if ref is None:
        return None, []
    row = catalog.resolve(session, ref)
    packages = [Deb(p.name, p.architecture, p.version, p.sha256) for p in row.packages]
    return load_image(home, layout, row), packages


@dataclass(frozen=True)
class Resolved:
    """What a recipe's packages resolve to today, on top of its parent."""

    parent_digest: str | None
    packages: list[Deb]


def resolve_one(
    home: Home,
    layout: Layout,
    catalog: Catalog,
    recipe: RecipeFile,
    parent_ref: str | None,
    options: Options,
    log: Callable[[str], None],
) -> Resolved:
    """Bake ``recipe`` without its lock, up to the package record, and keep nothing.

    This is kiln lock's resolution: apt and mmdebstrap choose the packages in a real root,
    and the bake from the lock that follows makes the image. No image, layer or catalog row
    comes of it, so a name never means an unlocked build.
    """
    with catalog.reading() as session:
        parent, parent_packages = _parent(home, layout, catalog, session, recipe, parent_ref)
    parent_digest = parent.manifest.digest if parent else None
    spec = recipe.recipe.image.bootstrap
    key = cachekey.compute(
        recipe,
        parent_digest,
        use_lock=False,
        sources=debian.sources(spec, options.mirror) if spec is not None else None,
    )
    build_dir, held = locks.owned_dir(home.builds, f"{recipe.name}-")
    with held:
        context = BuildContext(
            home=home,
            layout=layout,
            catalog=catalog,
            recipe=recipe,
            options=replace(options, ignore_lock=True, no_cache=True),
            cache_key=key,
            parent=parent,
            build_dir=build_dir,
            log=lambda message: log(f"{recipe.name}: {message}"),
        )
        context.parent_packages = parent_packages
        context.source_date_epoch = recipe.recipe.image.source_date_epoch
        build.resolve(context)
    return Resolved(parent_digest, list(context.packages))


def _cached(
    catalog: Catalog,
    layout: Layout,
    session: Session,
    recipe: RecipeFile,
    key: str,
    options: Options,
    started: float,
) -> build.BakeResult | None:
    hit = None if options.no_cache else catalog.by_cache_key(session, key)
    if hit is None or not layout.has_blob(hit.digest):
        return None
    return build.BakeResult(
        name=hit.name,
        version=hit.version,
        digest=hit.digest,
        cache_key=key,
        cached=True,
        seconds=time.monotonic() - started,
        recipe=str(recipe.path),
    )


def bake_path(
    target: Path, options: Options, log: Callable[[str], None], home: Home | None = None
) -> tuple[list[build.BakeResult], list[RecipeFile]]:
    """Bake a recipe (with its recipe-path ancestors) or a folder of recipes."""
    ordered, named = plan(target)
    home = home or Home.from_env()
    layout, catalog = open_store(home)
    try:
        results: list[build.BakeResult] = []
        baked: dict[Path, str] = {}
        names: dict[str, str] = {}
        for recipe in ordered:
            result = bake_one(
                home, layout, catalog, recipe, parent_recipe(recipe, baked, names), options, log
            )
            baked[recipe.path] = names[recipe.name] = result.ref
            results.append(result)
        return results, named
    finally:
        catalog.close()
