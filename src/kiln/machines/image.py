"""The image a machine boots, found the quick way: the store's index.json and blobs.

``kiln run`` is on the clock (time to healthy includes kiln's own start), so the image
is looked up in the OCI layout, which is plain JSON, while the catalog and SQLAlchemy load
on another thread; the launch checks the catalog agrees before it records the machine.
Layers come from the store's unpacked-layer cache (``kiln.store.unpacked``), the same one
bakes use: each blob is checked to be there at its size before the machine boots from its
unpacked copy, and a layer not unpacked yet is unpacked and verified first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import BadInput, NotFound
from kiln.home import Home
from kiln.store import unpacked
from kiln.store.layout import Descriptor, Layout

REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*)(?::(?P<version>[0-9]+|latest)|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class BootImage:
    ref: str  # name:version
    digest: str  # manifest digest
    config: dict[str, Any]
    layer_dirs: tuple[Path, ...]  # bottom first

    @property
    def name(self) -> str:
        return self.ref.split(":", 1)[0]


def _pick(layout: Layout, ref: str) -> tuple[str, str]:
    match = REF_RE.match(ref)
    if not match:
        raise BadInput(
            f"'{ref}' is not an image ref",
            hint="use name, name:version, name:latest or name@sha256:<hex>",
        )
    name, version, digest = match.group("name", "version", "digest")
    tagged: list[tuple[int, str, str]] = []
    for tag, descriptor in layout.refs().items():
        tag_name, _, tag_version = tag.rpartition(":")
        if tag_name == name and tag_version.isdigit():
            tagged.append((int(tag_version), tag, descriptor.digest))
    if digest:
        tagged = [t for t in tagged if t[2] == digest]
    elif version and version != "latest":
        tagged = [t for t in tagged if t[0] == int(version)]
    if not tagged:
        raise NotFound(
            f"no image {ref} in the store",
            hint="'kiln images' lists the images; bake the recipe first",
        )
    _version, tag, found = max(tagged)
    return tag, found


def find(home: Home, ref: str) -> BootImage:
    layout = Layout(home.oci)
    tag, digest = _pick(layout, ref)
    manifest = layout.read_json(digest)
    config: dict[str, Any] = layout.read_json(manifest["config"]["digest"])
    dirs = tuple(
        unpacked.ensure(home, layout, Descriptor.from_json(blob), diff_id, f"{tag} layer {n}")
        for n, (blob, diff_id) in enumerate(
            zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
        )
    )
    return BootImage(tag, digest, config, dirs)
