"""A base root from a vendor's root filesystem tarball or an OCI archive."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from kiln import proc
from kiln.errors import BadInput
from kiln.store.apply import apply_tar

VERSION = 1


def _is_oci_archive(path: Path) -> bool:
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if member.name.lstrip("./") == "oci-layout":
                    return True
                if member.name.lstrip("./") not in (
                    "",
                    "index.json",
                    "blobs",
                ) and not member.name.lstrip("./").startswith("blobs/"):
                    return False
    except tarfile.TarError:
        return False
    return False


def import_root(source: Path, root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if not _is_oci_archive(source):
        apply_tar(source, root)
        return
    with tempfile.TemporaryDirectory(dir=tmp, prefix="import-") as folder:
        layout = Path(folder)
        proc.run(["tar", "--extract", f"--file={source}", f"--directory={layout}"])
        index = json.loads((layout / "index.json").read_text())
        manifests = index.get("manifests") or []
        if not manifests:
            raise BadInput(f"{source} is an OCI archive with no image in its index.json")
        manifest = _blob_json(layout, manifests[0]["digest"])
        if "layers" not in manifest:  # an index of platforms: take the first image
            manifest = _blob_json(layout, manifest["manifests"][0]["digest"])
        for layer in manifest["layers"]:
            apply_tar(_blob(layout, layer["digest"]), root)


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algo / hexdigest


def _blob_json(layout: Path, digest: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_blob(layout, digest).read_text())
    return data
