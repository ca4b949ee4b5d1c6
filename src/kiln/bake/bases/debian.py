"""A Debian base root made by mmdebstrap."""

from __future__ import annotations

from pathlib import Path

from kiln import proc
from kiln.bake.bases.apt_sources import mirror_lines
from kiln.recipe.models import Bootstrap

VERSION = 2


def mmdebstrap_argv(
    spec: Bootstrap, packages: tuple[str, ...], root: Path, mirror: str | None
) -> list[str]:
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        f"--variant={spec.variant}",
        f"--components={','.join(spec.components)}",
    ]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    # mmdebstrap copies the host's resolv.conf and hostname in; neither belongs in an image.
    argv.append('--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"')
    return [
        *argv,
        spec.debian,
        str(root),
        *mirror_lines(spec.debian, spec.mirror or mirror, spec.components),
    ]


def bootstrap(spec: Bootstrap, packages: tuple[str, ...], root: Path, mirror: str | None) -> None:
    proc.run(mmdebstrap_argv(spec, packages, root, mirror))
