"""Export an image: as an OCI archive (a tar of a one-image layout) or as a root tarball.

Both write to a temp file beside the target and rename it in place at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kiln import locks, proc
from kiln.atomic import write_atomic
from kiln.digests import canonical_json
from kiln.store.layout import REF_ANNOTATION, Descriptor, Layout


@contextmanager
def _atomic_output(output: Path) -> Iterator[Path]:
    output = output.absolute()
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def oci_archive(
    layout: Layout, manifest: Descriptor, ref: str, output: Path, scratch: Path
) -> None:
    """A tar of an OCI layout holding just this image (skopeo's oci-archive: transport)."""
    data = layout.read_json(manifest.digest)
    digests = [manifest.digest, data["config"]["digest"], *(x["digest"] for x in data["layers"])]
    with locks.scratch_dir(scratch, "export-") as folder:
        staging = Path(folder)
        blobs = staging / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for digest in dict.fromkeys(digests):
            layout.verify_blob(digest, f"{ref} for export")  # never ship a corrupt blob
            os.link(layout.blob_path(digest), blobs / digest.split(":", 1)[1])
        write_atomic(staging / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        entry = manifest.to_json()
        entry["annotations"] = {REF_ANNOTATION: ref}
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        }
        write_atomic(staging / "index.json", canonical_json(index))
        with _atomic_output(output) as tmp:
            proc.run(
                [
                    "tar",
                    "--create",
                    f"--file={tmp}",
                    f"--directory={staging}",
                    "--sort=name",
                    "--numeric-owner",
                    "--owner=0",
                    "--group=0",
                    "--hard-dereference",
                    "--format=posix",
                    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                    "oci-layout",
                    "index.json",
                    "blobs",
                ]
            )


def rootfs_tar(layer_dirs: Sequence[Path], output: Path, scratch: Path) -> None:
    """The image's merged root as one plain tarball (overlay mounted read-only to read it)."""
    with _atomic_output(output) as tmp:
        if len(layer_dirs) == 1:
            _tar_root(layer_dirs[0], tmp)
            return
        with locks.scratch_dir(scratch, "export-") as folder:
            target = Path(folder)
            lower = ":".join(str(p) for p in reversed(layer_dirs))
            proc.run(
                ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(target)]
            )
            try:
                _tar_root(target, tmp)
            finally:
                proc.run(["umount", str(target)])


def _tar_root(root: Path, output: Path) -> None:
    proc.run(
        [
            "tar",
            "--create",
            f"--file={output}",
            f"--directory={root}",
            "--sort=name",
            "--numeric-owner",
            "--format=posix",
            "--sparse",
            "--sparse-version=0.0",  # as in layers: 1.0 puts tar's PID into the header names
            "--xattrs",
            "--xattrs-include=security.capability",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            ".",
        ]
    )
