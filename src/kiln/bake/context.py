"""What every bake stage reads and writes: one mutable context, passed down the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.bake.debcache import PackageCache
from kiln.bake.options import Options
from kiln.home import Home
from kiln.mounts import Overlay
from kiln.recipe import RecipeFile
from kiln.recipe.lockfile import Deb, Lock
from kiln.sandbox import BUILD_ENV, Sandbox
from kiln.store.layout import Layout
from kiln.store.stored import StoredImage

if TYPE_CHECKING:
    from kiln.bake.cachekey import Material
    from kiln.catalog import Catalog


@dataclass
class BuildContext:
    """One bake's state. Who writes what, in pipeline order (kiln.bake.build.STAGES):

    - the caller (kiln.bake.bake): the constructor's arguments, then ``lock``, ``materials``,
      ``source_date_epoch`` and ``parent_packages``, before the first stage;
    - ``__post_init__``: ``root`` and ``layer_source`` (both the plain root);
    - prepare_root: ``overlay`` and ``layer_source`` (its upper dir) on a parent,
      ``debs`` (a Debian base's), ``import_special`` (an imported base's),
      ``created_mount_points``;
    - install_packages: ``debs``, and ``packages`` when it unpacks .debs itself (a root
      without apt);
    - run_steps, enable_services: only the root (steps see a Target, not this context);
    - seal_root: ``seal_checks``;
    - record_packages: ``packages`` (what the root holds now) and ``distro``;
    - close_root: unmounts ``overlay``; capture and commit read the rest.
    """

    home: Home
    layout: Layout
    catalog: Catalog
    recipe: RecipeFile
    options: Options
    cache_key: str
    parent: StoredImage | None
    parent_id: int | None  # the parent's catalog row
    build_dir: Path
    log: Callable[[str], None]
    root: Path = field(init=False)  # the tree steps change (an overlay mount, or a plain dir)
    layer_source: Path = field(init=False)  # what becomes the new layer (upper dir, or root)
    lock: Lock | None = None
    materials: list[Material] = field(default_factory=list)  # hashed once, for key and provenance
    source_date_epoch: int | None = None
    debs: dict[tuple[str, str, str], Deb] = field(default_factory=dict)  # .debs seen in the bake
    packages: list[Deb] = field(default_factory=list)  # what the image holds, sha256 if known
    parent_packages: list[Deb] = field(default_factory=list)
    distro: str | None = None  # e.g. debian-bookworm, for package URLs
    created_mount_points: list[str] = field(default_factory=list)
    overlay: Overlay | None = None
    seal_checks: list[dict[str, object]] = field(default_factory=list)
    # device nodes and setuid/setgid files of an imported base (None: not looked yet)
    import_special: list[dict[str, str]] | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.root = self.build_dir / "root"
        self.layer_source = self.root

    @property
    def sandbox(self) -> Sandbox:
        env = dict(BUILD_ENV)
        if self.source_date_epoch is not None:
            env["SOURCE_DATE_EPOCH"] = str(self.source_date_epoch)
        return Sandbox(self.root, self.home.id, env=env)  # host-wide names: this home's

    @property
    def cache(self) -> PackageCache:
        return PackageCache(self.home.debs)
