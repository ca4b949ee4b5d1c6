"""A Debian base root made by mmdebstrap.

Unlocked, mmdebstrap resolves against the mirror and every .deb it installs is kept in
the package cache. Locked, it installs from a flat repository of exactly the locked
packages (built from the cache), and the image's sources.list still names the real mirror;
the packages the lock says apt installed automatically are then marked so.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln import proc
from kiln.apt.sources import mirror_lines
from kiln.bake.context import BuildContext
from kiln.bake.keydoc import image_sources
from kiln.bake.packages import Seen, mark_locked
from kiln.recipe.models import Bootstrap

VERSION = 5  # 5: a locked base marks its packages automatically installed as its lock says
UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/kiln-unsafe-io"


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


def sources(spec: Bootstrap, fallback: str | None = None) -> list[str]:
    """The lines the image's sources.list holds (kiln.bake.keydoc.image_sources)."""
    return image_sources(spec.debian, spec.mirror, spec.components, fallback)


def fetch_sources(spec: Bootstrap, mirror: str | None) -> list[str]:
    """Where packages are fetched from: the mirror setting (--mirror, KILN_MIRROR) if any.

    It is only a transport, like a proxy: it never reaches the image, whose sources.list
    stays the recipe's, so the same lock gives the same image whichever mirror served it.
    """
    return mirror_lines(spec.debian, mirror or spec.mirror, spec.components)


def bootstrap(context: BuildContext) -> Seen:
    """The base root, by mmdebstrap; returns the .debs it installed."""
    spec = context.recipe.recipe.image.bootstrap
    assert spec is not None
    packages = context.recipe.recipe.packages.apt
    env = {}
    if context.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(context.source_date_epoch)
    listing = context.build_dir / "etc" / "sources.list"
    listing.parent.mkdir()
    listing.write_text("\n".join(sources(spec, context.options.mirror)) + "\n")
    fetch = fetch_sources(spec, context.options.mirror)
    keep_sources = f"--customize-hook=copy-in {listing} /etc/apt/"
    # dpkg's fsyncs buy nothing in a root that becomes one fsynced blob; bench/bake.py times it
    unsafe_io = [
        '--setup-hook=mkdir -p "$1/etc/dpkg/dpkg.cfg.d" && '
        f'echo force-unsafe-io > "$1/{UNSAFE_IO}"',
        f'--customize-hook=rm -f "$1/{UNSAFE_IO}"',
    ]
    lock = context.lock
    if lock is None:
        harvest = context.build_dir / "debs"
        harvest.mkdir()
        argv = mmdebstrap_argv(spec, packages, context.root, fetch)
        hooks = [
            "--skip=essential/unlink",
            f"--customize-hook=sync-out /var/cache/apt/archives {harvest}",
            keep_sources,
            *unsafe_io,
        ]
        proc.run([argv[0], *hooks, *argv[1:]], env=env, echo=True)
        return context.cache.harvest(harvest)
    cache = context.cache
    cache.fetch(lock.packages, fetch, context.home.tmp)
    repo = context.build_dir / "repo"
    repo_line = cache.make_repo(lock.packages, repo, spec.debian)
    os.chmod(repo, 0o755)
    names = sorted({deb.name for deb in lock.packages})
    argv = mmdebstrap_argv(spec, tuple(names), context.root, [repo_line])
    proc.run([argv[0], keep_sources, *unsafe_io, *argv[1:]], env=env, echo=True)
    # apt was asked for every package, so it marked none: mark them as the unlocked
    # bootstrap the lock was resolved from left them
    mark_locked(context, lock.packages)
    return {deb.key: deb for deb in lock.packages}
