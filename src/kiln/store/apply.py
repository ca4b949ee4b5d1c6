"""Apply a vendor's layer tars onto a flat root, honouring OCI whiteouts (imports)."""

from __future__ import annotations

import os
from pathlib import Path

from kiln import proc
from kiln.store import whiteout


def apply_tar(tarball: Path, dest: Path) -> None:
    """Apply a layer tar (any compression tar detects) onto a flat root, honouring whiteouts.

    Used when importing a vendor image: each of its layers is applied in order and the
    result becomes one kiln base layer.
    """
    dest.mkdir(parents=True, exist_ok=True)
    names = proc.output(["tar", "--list", f"--file={tarball}"]).splitlines()
    for name in names:
        clean = os.path.normpath(name.lstrip("/"))
        if clean.startswith(".."):
            raise proc.CommandError(
                ["tar", "--list", str(tarball)], 1, f"refusing entry outside the root: {name}"
            )
        folder, base = os.path.split(clean)
        if base == whiteout.WH_OPAQUE:
            target = dest / folder
            if target.is_dir():
                for child in target.iterdir():
                    _remove(child)
        elif base.startswith(whiteout.WH_PREFIX):
            _remove(dest / folder / base[len(whiteout.WH_PREFIX) :])
    proc.run(
        [
            "tar",
            "--extract",
            f"--file={tarball}",
            f"--directory={dest}",
            "--numeric-owner",
            "--same-permissions",
            "--same-owner",
            "--xattrs",
            "--xattrs-include=security.*",
            "--delay-directory-restore",
            "--exclude=.wh.*",
            "--exclude=./.wh.*",
        ]
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])
    elif path.exists() or path.is_symlink():
        path.unlink()
