"""A Debian base root made by mmdebstrap.

Unlocked, mmdebstrap resolves against the mirror and every .deb it installs is kept in
the package cache. Locked, it installs from a flat repository of exactly the locked
packages (built from the cache), and the image's sources.list still names the real mirror.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln import proc
from kiln.bake.bases.apt_sources import mirror_lines
from kiln.bake.context import BuildContext
from kiln.recipe.models import Bootstrap

VERSION = 3
AUTOMOUNT = "/usr/share/mmdebstrap/hooks/file-mirror-automount"


def mmdebstrap_argv(
    spec: Bootstrap, packages: tuple[str, ...], root: Path, mirrors: list[str]
) -> list[str]:
    """The plain bootstrap: what `mmdebstrap` alone would be asked to do."""
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
    return [*argv, spec.debian, str(root), *mirrors]


def sources(spec: Bootstrap, mirror: str | None) -> list[str]:
    """The mirror lines the base is made from, and that its sources.list will hold."""
    return mirror_lines(spec.debian, spec.mirror or mirror, spec.components)


def bootstrap(context: BuildContext) -> None:
    spec = context.recipe.recipe.image.bootstrap
    assert spec is not None
    packages = context.recipe.recipe.packages.apt
    env = {}
    if context.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(context.source_date_epoch)
    lines = sources(spec, context.options.mirror)
    lock = context.lock
    if lock is None:
        harvest = context.build_dir / "debs"
        harvest.mkdir()
        argv = mmdebstrap_argv(spec, packages, context.root, lines)
        hooks = [
            "--skip=essential/unlink",
            f"--customize-hook=sync-out /var/cache/apt/archives {harvest}",
        ]
        proc.run([argv[0], *hooks, *argv[1:]], env=env)
        context.debs.update(context.cache.harvest(harvest))
        return
    cache = context.cache
    cache.fetch(lock.packages, lines, context.home.tmp)
    repo = context.build_dir / "repo"
    repo_line = cache.make_repo(lock.packages, repo, spec.debian)
    os.chmod(repo, 0o755)
    listing = context.build_dir / "etc" / "sources.list"
    listing.parent.mkdir()
    listing.write_text("\n".join(lines) + "\n")
    names = sorted({deb.name for deb in lock.packages})
    argv = mmdebstrap_argv(spec, tuple(names), context.root, [repo_line])
    hooks = [f"--hook-dir={AUTOMOUNT}", f"--customize-hook=copy-in {listing} /etc/apt/"]
    proc.run([argv[0], *hooks, *argv[1:]], env=env)
    context.debs.update({deb.key: deb for deb in lock.packages})
