"""What every bake stage reads and writes: one mutable context, passed down the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.bake.root import Overlay
from kiln.catalog import Catalog
from kiln.home import Home
from kiln.recipe import RecipeFile
from kiln.sandbox import Sandbox
from kiln.store.layout import Descriptor, Layout


@dataclass(frozen=True)
class StoredImage:
    """A stored image a new layer goes on top of."""

    ref: str
    catalog_id: int
    manifest: Descriptor
    config: dict[str, object]
    layer_dirs: tuple[Path, ...]  # unpacked layers, bottom first

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.config["rootfs"]
        assert isinstance(rootfs, dict)
        return list(rootfs["diff_ids"])


@dataclass(frozen=True)
class Options:
    no_cache: bool = False
    keep_on_error: bool = False
    mirror: str | None = None


@dataclass
class BuildContext:
    home: Home
    layout: Layout
    catalog: Catalog
    recipe: RecipeFile
    options: Options
    cache_key: str
    parent: StoredImage | None
    build_dir: Path
    log: Callable[[str], None]
    root: Path = field(init=False)  # the tree steps change (an overlay mount, or a plain dir)
    layer_source: Path = field(init=False)  # what becomes the new layer (upper dir, or root)
    packages: list[tuple[str, str, str]] = field(default_factory=list)
    parent_packages: list[tuple[str, str, str]] = field(default_factory=list)
    created_mount_points: list[str] = field(default_factory=list)
    overlay: Overlay | None = None
    seal_checks: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = self.build_dir / "root"
        self.layer_source = self.root

    @property
    def sandbox(self) -> Sandbox:
        return Sandbox(self.root)
