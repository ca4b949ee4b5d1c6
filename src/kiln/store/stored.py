"""A stored image ready to use: its manifest, its config, and its layers unpacked.

Bakes put a new layer on top of one (a parent); machines boot one. Each layer comes from
the store's unpacked-layer cache (kiln.store.unpacked): the blob is checked to be there
at its size before its unpacked copy is used, and a layer not unpacked yet is unpacked
and verified first. Which image a ref names is the catalog's answer, not the store's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import StoreError
from kiln.home import Home
from kiln.store import unpacked
from kiln.store.layout import FSCK_HINT, MEDIA_MANIFEST, Descriptor, Layout


@dataclass(frozen=True)
class StoredImage:
    ref: str  # name:version
    manifest: Descriptor
    config: dict[str, Any]
    layer_dirs: tuple[Path, ...]  # unpacked layers, bottom first

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[0]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])


def load(home: Home, layout: Layout, ref: str, digest: str) -> StoredImage:
    if not layout.has_blob(digest):
        raise StoreError(
            f"{ref} is in the catalog, but its manifest {digest} is not in the store",
            hint=FSCK_HINT,
        )
    raw = layout.read_bytes(digest)
    manifest_json: dict[str, Any] = json.loads(raw)  # read (and its digest checked) once
    config: dict[str, Any] = layout.read_json(manifest_json["config"]["digest"])
    dirs = tuple(
        unpacked.ensure(home, layout, Descriptor.from_json(blob), diff_id, f"{ref} layer {n}")
        for n, (blob, diff_id) in enumerate(
            zip(manifest_json["layers"], config["rootfs"]["diff_ids"], strict=True)
        )
    )
    manifest = Descriptor(MEDIA_MANIFEST, digest, len(raw))
    return StoredImage(ref, manifest, config, dirs)
