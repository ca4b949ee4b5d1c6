"""A base root from a vendor's root filesystem tarball or an OCI archive."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from kiln import locks, proc
from kiln.atomic import make_dirs
from kiln.errors import BadInput
from kiln.rootpath import Root
from kiln.store.apply import apply_tar

VERSION = 1
MAX_LISTED = 1000  # special files named one by one; more are counted


def special_files(root: Path) -> list[dict[str, str]]:
    """Device nodes, FIFOs, sockets and setuid/setgid files under ``root``, sorted by path.

    What a vendor's tree brings that deserves a look before it is trusted. The walk uses
    lstat only: no symlink in the tree is followed.
    """
    found: list[dict[str, str]] = []
    with Root(root) as tree:
        for rel_dir, _fd, entries in tree.walk():
            for name, st in entries.items():
                kinds = _special_kinds(st)
                if kinds:
                    found.append(
                        {
                            "path": f"/{rel_dir}/{name}" if rel_dir else f"/{name}",
                            "kind": " ".join(kinds),
                            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                            "owner": f"{st.st_uid}:{st.st_gid}",
                        }
                    )
    return sorted(found, key=lambda item: item["path"])


def _special_kinds(st: os.stat_result) -> list[str]:
    mode = st.st_mode
    kinds = []
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char device" if stat.S_ISCHR(mode) else "block device"
        kinds.append(f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    elif stat.S_ISFIFO(mode):
        kinds.append("fifo")
    elif stat.S_ISSOCK(mode):
        kinds.append("socket")
    if stat.S_ISREG(mode) and mode & stat.S_ISUID:
        kinds.append("setuid")
    if stat.S_ISREG(mode) and mode & stat.S_ISGID:
        kinds.append("setgid")
    return kinds


def describe(found: list[dict[str, str]]) -> str:
    """The findings as lines for the bake's log."""
    lines = [f"  {item['path']}  {item['kind']}  {item['mode']}" for item in found[:MAX_LISTED]]
    if len(found) > MAX_LISTED:
        lines.append(f"  ... and {len(found) - MAX_LISTED} more")
    return "\n".join(lines)


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
    make_dirs(root)
    if not _is_oci_archive(source):
        apply_tar(source, root)
        return
    with locks.scratch_dir(tmp, "import-") as folder:
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
