"""Bake one recipe: find the image its inputs already made, or build it.

    read_lock -> cache key (kiln.bake.cachekey) -> a cache hit? -> the cache-key lock
    -> a cache hit now? -> build_image (kiln.bake.build)

The caller (kiln.app.bake) has resolved the parent through the catalog; what is left is
the lock, the cache key, the cache-key lock that makes a second bake of the same inputs
wait for the first, and the build. A cache hit is answered by the catalog's plain-SQL
lookup: SQLAlchemy loads only when something is built. :func:`resolve_packages` is
``kiln lock``'s: the same stages up to the package record, on a root thrown away after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kiln import locks
from kiln.bake import again, cachekey, memo
from kiln.bake.context import BuildContext
from kiln.bake.options import Options
from kiln.bake.result import BakeResult
from kiln.catalog.holdings import Holder
from kiln.catalog.lookup import ImageRow
from kiln.errors import BadInput
from kiln.recipe import RecipeFile, lockfile
from kiln.recipe.lockfile import Deb, Lock
from kiln.store.stored import StoredImage

if TYPE_CHECKING:
    from kiln.catalog import Catalog

Log = Callable[[str], None]


class Stores(memo.Reads, Protocol):
    """Where a bake reads and writes: kiln.app's Workspace is one."""

    @property
    def catalog(self) -> Catalog: ...

    def fetch_elsewhere(self, row: ImageRow) -> bool:
        """Bring an image the catalog lists, whose bytes another store holds, into this
        one (from a registry); False when there is nowhere to pull it from."""
        ...


@dataclass(frozen=True)
class Parent:
    """The image a recipe goes on top of, as the catalog and the store give it."""

    row: ImageRow
    image: StoredImage
    packages: list[Deb]


def _key(
    recipe: RecipeFile, parent: Parent | None, lock: Lock | None, options: Options
) -> tuple[str, list[cachekey.Material], memo.Entry]:
    """The cache key; it also leaves the memo a rebake that changes nothing starts from."""
    spec = recipe.recipe.image.bootstrap
    found = cachekey.materials(recipe)
    parent_digest = parent.image.digest if parent else None
    document = cachekey.bake_document(recipe, parent_digest, lock, options.mirror, found)
    return (
        cachekey.key_of(document),
        found,
        memo.Entry(
            path=recipe.path,
            name=recipe.name,
            parent=recipe.recipe.image.parent,
            parent_path=recipe.parent_recipe_path(),
            document={"kiln": document["kiln"], "recipe": document["recipe"]},
            materials=[(m.key, str(m.source), m.kind, m.skip) for m in found],
            lock_parent=lock.parent if lock is not None else None,
            uses_lock=lock is not None,
            sources=(spec.debian, spec.mirror, tuple(spec.components)) if spec else None,
        ),
    )


def read_lock(recipe: RecipeFile, parent: Parent | None, options: Options) -> Lock | None:
    """The recipe's lock, once per bake; a stale one is refused (exit 2)."""
    path = lockfile.lock_path(recipe.path)
    if options.ignore_lock or not path.is_file():
        return None
    lock = lockfile.parse(path)
    why = lockfile.stale(lock, recipe.recipe.packages.apt, parent.image.digest if parent else None)
    if why is not None:
        raise BadInput(f"{path} is stale: {why}", hint=f"re-resolve it: kiln lock {recipe.path}")
    return lock


def bake_image(
    stores: Stores, recipe: RecipeFile, parent: Parent | None, options: Options, log: Log
) -> BakeResult:
    """The image ``recipe`` makes on ``parent``: the one its inputs made before (a cache
    hit), or a new one built now."""
    started = time.monotonic()
    lock = read_lock(recipe, parent, options)
    key, found, entry = _key(recipe, parent, lock, options)
    memo.remember(stores.home, recipe.digest, lock.digest if lock else None, entry)
    hit = _cached(stores, key, options)
    newest = again.current(stores.lookup, hit) if hit is not None else None
    if newest is not None:
        return again.result(newest, key, str(recipe.path), time.monotonic() - started, True)
    home = stores.home
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
        hit = _cached(stores, key, options, fetch=True)
        if hit is not None:  # the newest version, or an older one made the newest again
            made_on = (parent.row.id, parent.row.ref) if parent else None
            return again.settle(
                stores.catalog,
                stores.layout,
                recipe,
                made_on,
                hit,
                key,
                started,
                cached=True,
                holder=Holder.of(home),
            )
        from kiln.bake import build  # the pipeline, and SQLAlchemy with it, only to build

        now = datetime.now(UTC)
        epoch = (
            lock.source_date_epoch if lock is not None else recipe.recipe.image.source_date_epoch
        )
        if epoch is None:
            # Unlocked and unstamped: stamp it with when it started, which the lock it keeps
            # says, so a rebuild from that lock can make the same bytes (kiln rebuild --prove).
            epoch = int(now.timestamp())
        build_dir, held = locks.owned_dir(home.builds, f"{recipe.name}-")
        with held:  # released when the bake is over: then the folder is gone or kept
            context = build_context(
                stores, recipe, parent, options, key, build_dir, log, lock, found, epoch, now
            )
            return build.build_image(context)


@dataclass(frozen=True)
class Resolved:
    """What a recipe's packages resolve to today, on top of its parent."""

    parent_digest: str | None
    packages: list[Deb]


def resolve_packages(
    stores: Stores, recipe: RecipeFile, parent: Parent | None, options: Options, log: Log
) -> Resolved:
    """Bake ``recipe`` without its lock, up to the package record, and keep nothing.

    This is kiln lock's resolution: apt and mmdebstrap choose the packages in a real root,
    and the bake from the lock that follows makes the image. No image, layer or catalog row
    comes of it, so a name never means an unlocked build.
    """
    from kiln.bake import build

    key, found, _entry = _key(recipe, parent, None, options)
    build_dir, held = locks.owned_dir(stores.home.builds, f"{recipe.name}-")
    with held:
        unlocked = replace(options, ignore_lock=True, no_cache=True)
        epoch = recipe.recipe.image.source_date_epoch
        context = build_context(
            stores, recipe, parent, unlocked, key, build_dir, log, None, found, epoch
        )
        packages = build.resolve_root(context)
    return Resolved(parent.image.digest if parent else None, packages)


def build_context(
    stores: Stores,
    recipe: RecipeFile,
    parent: Parent | None,
    options: Options,
    key: str,
    build_dir: Path,
    log: Log,
    lock: Lock | None,
    materials: list[cachekey.Material],
    source_date_epoch: int | None,
    started: datetime | None = None,
) -> BuildContext:
    """What a bake of ``recipe`` on ``parent`` knows before its first stage."""
    return BuildContext(
        home=stores.home,
        layout=stores.layout,
        catalog=stores.catalog,
        recipe=recipe,
        options=options,
        cache_key=key,
        parent=parent.image if parent else None,
        parent_id=parent.row.id if parent else None,
        parent_packages=tuple(parent.packages) if parent else (),
        lock=lock,
        materials=tuple(materials),
        source_date_epoch=source_date_epoch,
        build_dir=build_dir,
        log=lambda message: log(f"{recipe.name}: {message}"),
        started=started or datetime.now(UTC),
    )


def _cached(stores: Stores, key: str, options: Options, fetch: bool = False) -> ImageRow | None:
    """The image these inputs made, when its bytes are still stored (None with --no-cache);
    with ``fetch``, also when another store sharing the catalog holds them and they can
    be pulled here (a team's bake is not done twice)."""
    hit = None if options.no_cache else stores.lookup.by_cache_key(key)
    if hit is None:
        return None
    if not stores.layout.has_blob(hit.digest) and not (fetch and stores.fetch_elsewhere(hit)):
        return None
    return hit
