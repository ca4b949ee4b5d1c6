"""KILN_HOME: where the embedded store and catalog live, and the paths inside it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from kiln.atomic import make_dirs

DEFAULT_HOME = Path("/var/lib/kiln")


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("KILN_HOME", str(DEFAULT_HOME))).absolute())

    @property
    def id(self) -> str:
        """This home's short id: 8 hex of the sha256 of its resolved path. Names kiln gives
        things that are host-wide (cgroups, systemd-nspawn machine names) carry it, so two
        homes' machines of one name never share them (docs/machines.md)."""
        return hashlib.sha256(os.fsencode(self.root.resolve())).hexdigest()[:8]

    @property
    def oci(self) -> Path:
        return self.root / "oci"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def debs(self) -> Path:
        return self.root / "cache" / "debs"

    @property
    def tmp(self) -> Path:
        """Scratch space on the store's file system, so finished work moves in by rename."""
        return self.root / "tmp"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def locks(self) -> Path:
        """Named lock files (kiln.locks): one per cache key being baked, and store.lock."""
        return self.root / "locks"

    @property
    def store_lock(self) -> Path:
        """Held shared by a bake from layer capture until its tag is written, and
        exclusively by ``kiln gc`` while it removes unreferenced blobs and layers."""
        return self.locks / "store.lock"

    @property
    def catalog_url(self) -> str:
        return os.environ.get("KILN_CATALOG_URL") or f"sqlite:///{self.root / 'catalog.db'}"

    def ensure(self) -> None:
        for path in (self.root, self.layers, self.debs, self.tmp, self.builds, self.locks):
            make_dirs(path)
