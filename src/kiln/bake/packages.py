"""Debian packages: installed with the image's own apt, or unpacked into a root without one.

Every .deb that passes through is kept in the package cache by sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.bake.context import BuildContext

VERSION = 1
HOST_ARCHIVES = Path("/var/cache/apt/archives")
APT_OPTIONS = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Install-Recommends=false"]


def has_dpkg(root: Path) -> bool:
    return (root / "var/lib/dpkg/status").is_file()


def has_apt(root: Path) -> bool:
    return (root / "usr/bin/apt-get").exists()


def install(context: BuildContext, packages: tuple[str, ...]) -> None:
    if not packages:
        return
    if has_apt(context.root):
        sandbox = context.sandbox
        sandbox.run(["apt-get", *APT_OPTIONS, "update"])
        sandbox.run(["apt-get", *APT_OPTIONS, "install", "--yes", *packages])
        sandbox.run(["apt-get", "clean"])  # the seal removes the lists
    else:
        unpack(context, packages)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_deb(deb: Path, cache: Path) -> Path:
    """Keep a .deb in the cache under its sha256; return the cached path."""
    digest = file_sha256(deb)
    target = cache / f"{digest}.deb"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(deb, tmp)
        os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    architecture: str
    sha256: str
    filename: str  # path of the .deb on the mirror


def candidate(package: str) -> Candidate:
    """What the host's apt would install for ``package``: version and .deb sha256."""
    text = proc.output(["apt-cache", "show", "--no-all-versions", package])
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields.setdefault(key, value.strip())
    return Candidate(
        fields["Package"],
        fields["Version"],
        fields["Architecture"],
        fields["SHA256"],
        fields["Filename"],
    )


def fetch(wanted: Candidate, cache: Path, tmp: Path) -> Path:
    """The .deb for ``wanted``: from kiln's cache, the host's apt cache, or the mirror."""
    cached = cache / f"{wanted.sha256}.deb"
    if cached.is_file():
        return cached
    local = HOST_ARCHIVES / Path(wanted.filename).name
    if local.is_file() and file_sha256(local) == wanted.sha256:
        return cache_deb(local, cache)
    with tempfile.TemporaryDirectory(dir=tmp, prefix="debs-") as folder:
        proc.run(["apt-get", "download", f"{wanted.name}={wanted.version}"], cwd=Path(folder))
        [deb] = Path(folder).glob("*.deb")
        return cache_deb(deb, cache)


def unpack(context: BuildContext, packages: tuple[str, ...]) -> None:
    """For roots without dpkg (scratch): resolve with the host's apt, unpack with dpkg-deb.

    Dependencies and maintainer scripts are not run: this is for static tools such as
    busybox-static. A .deb already in kiln's package cache needs no network.
    """
    for package in packages:
        wanted = candidate(package)
        deb = fetch(wanted, context.home.debs, context.home.tmp)
        proc.run(["dpkg-deb", "--extract", str(deb), str(context.root)])
        context.packages.append((wanted.name, wanted.version, wanted.architecture))


def installed(root: Path) -> list[tuple[str, str, str]]:
    """(name, version, architecture) of every package dpkg knows in ``root``."""
    if not has_dpkg(root):
        return []
    text = proc.output(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "--show",
            "--showformat=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n",
        ]
    )
    out = []
    for line in text.splitlines():
        status, name, version, arch = line.split("\t")
        if status == "installed":
            out.append((name, version, arch))
    return sorted(out)
