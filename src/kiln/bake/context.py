"""What every bake stage reads: what is known of a bake before its first stage runs.

The context is frozen. A stage takes the context and what earlier stages made, and returns
what it made (kiln.bake.build): nothing here is filled in on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.bake.debcache import PackageCache
from kiln.bake.options import Options
from kiln.home import Home
from kiln.recipe import RecipeFile
from kiln.recipe.lockfile import Deb, Lock
from kiln.sandbox import BUILD_ENV, Sandbox
from kiln.store.layout import Layout
from kiln.store.stored import StoredImage

if TYPE_CHECKING:
    from kiln.bake.cachekey import Material
    from kiln.catalog import Catalog


@dataclass(frozen=True)
class BuildContext:
    """One bake's inputs, as kiln.bake.pipeline found them."""

    home: Home
    layout: Layout
    catalog: Catalog
    recipe: RecipeFile
    options: Options
    cache_key: str
    parent: StoredImage | None
    parent_id: int | None  # the parent's catalog row
    parent_packages: tuple[Deb, ...]  # what the parent holds
    lock: Lock | None  # the lock the bake is made from
    materials: tuple[Material, ...]  # hashed once, for key and provenance
    source_date_epoch: int | None
    build_dir: Path
    log: Callable[[str], None]
    started: datetime

    @property
    def root(self) -> Path:
        """The tree steps change: an overlay mount on the parent's layers, or a plain dir."""
        return self.build_dir / "root"

    @property
    def layer_source(self) -> Path:
        """What becomes the new layer: the overlay's upper dir on a parent, else the root."""
        return self.build_dir / "upper" if self.parent is not None else self.root

    @property
    def sandbox(self) -> Sandbox:
        env = dict(BUILD_ENV)
        if self.source_date_epoch is not None:
            env["SOURCE_DATE_EPOCH"] = str(self.source_date_epoch)
        return Sandbox(self.root, self.home.id, env=env)  # host-wide names: this home's

    @property
    def cache(self) -> PackageCache:
        return PackageCache(self.home.debs)
