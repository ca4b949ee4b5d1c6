"""Debian packages: installed with the image's own apt, or unpacked into a root without one.

Every .deb that passes through is kept in the package cache by sha256. With a lock, the
packages come from a flat repository built from the cache (fetched by exact version only
when missing), so a locked bake needs no mirror, and the result is checked against the lock.

Which packages apt marked automatically installed (``/var/lib/apt/extended_states``) is
part of the image: an unlocked bake lets apt mark the dependencies it pulls in, a locked
one names every package to apt and then marks them as the lock says (its ``auto`` words).
Either way kiln writes the file itself at the end, in one canonical order, so the same
marks give the same bytes.
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln import proc
from kiln.apt.sources import mirror_lines, os_codename
from kiln.bake.aptmarks import (
    EXTENDED_STATES,
    apply_lock_marks,
    apt_key,
    native_architecture,
    read_marks,
    write_marks,
)
from kiln.bake.context import BuildContext
from kiln.bake.debcache import find_archived
from kiln.digests import file_sha256
from kiln.errors import BadInput, KilnError
from kiln.recipe.lockfile import Deb, Lock
from kiln.rootpath import DIR, Root
from kiln.sandbox import APT_OPTIONS, Bind
from kiln.store.apply import apply_tar

# 3: apt's automatic marks set from the lock and written sorted; apt's lists and downloads
# kept out of the image
VERSION = 3
HOST_ARCHIVES = Path("/var/cache/apt/archives")
REPO = "/run/kiln/repo"  # where a bake's own apt sources are bound inside the root


def has_dpkg(root: Path) -> bool:
    with Root(root) as image:
        return image.exists("/var/lib/dpkg/status", follow=True)


def has_apt(root: Path) -> bool:
    with Root(root) as image:
        return image.exists("/usr/bin/apt-get", follow=True)


def spec(deb: Deb) -> str:
    """apt's name for an exact package: name:arch=version."""
    arch = "" if deb.architecture == "all" else f":{deb.architecture}"
    return f"{deb.name}{arch}={deb.version}"


def fetch_lines(context: BuildContext) -> list[str]:
    """Where missing .debs are fetched from: the mirror setting, else the host's sources."""
    suite = os_codename(context.root) or os_codename(Path("/")) or "stable"
    return mirror_lines(suite, context.options.mirror)


Seen = dict[tuple[str, str, str], Deb]  # the .debs a bake saw, by (name, version, arch)


@dataclass(frozen=True)
class Installed:
    """What an install made: the .debs it saw (with their sha256), and those it unpacked
    itself into a root without dpkg (which no dpkg database will list)."""

    debs: Seen = field(default_factory=dict)
    unpacked: tuple[Deb, ...] = ()


def _unpacked(debs: list[Deb]) -> Installed:
    return Installed({deb.key: deb for deb in debs}, tuple(debs))


def install(context: BuildContext, packages: tuple[str, ...]) -> Installed:
    lock = context.lock
    if lock is not None:
        have = {deb.key for deb in context.parent_packages}
        wanted = [deb for deb in lock.packages if deb.key not in have]
        if wanted and not has_apt(context.root):
            return _unpacked(unpack_locked(context, wanted))
        seen = apt_locked(context, lock, wanted) if wanted else {}
        if (wanted or packages) and has_apt(context.root):
            mark_locked(context, wanted, packages)
        return Installed(seen)
    if not packages:
        return Installed()
    if has_apt(context.root):
        return Installed(apt_unlocked(context, packages))
    return _unpacked(unpack(context, packages))


def _apt_command(options: list[str], packages: list[str]) -> list[str]:
    """One shell in the root that makes apt's private folders, updates and installs;
    every word is quoted, so a package or option is only ever one argument."""
    apt = ["apt-get", *APT_OPTIONS, *options]
    commands = [
        ["mkdir", "-p", f"{REPO}/lists/partial", f"{REPO}/archives/partial"],
        [*apt, "update"],
        [*apt, "install", "--yes", *packages],
    ]
    return ["/bin/sh", "-c", " && ".join(shlex.join(command) for command in commands)]


def _private_state(context: BuildContext) -> tuple[list[str], Bind]:
    """apt options keeping its lists and downloads in a folder of the bake's own (bound at
    REPO): the image's /var/lib/apt/lists and /var/cache/apt/archives stay as its parent
    left them, in a locked bake as in an unlocked one, so both make the same bytes."""
    folder = context.build_dir / "apt"
    folder.mkdir(exist_ok=True)
    options = [
        "-o",
        f"Dir::State::Lists={REPO}/lists",
        "-o",
        f"Dir::Cache::Archives={REPO}/archives",
    ]
    return options, Bind(folder, REPO, readonly=False)


def _private_sources(context: BuildContext, lines: list[str]) -> tuple[list[str], Bind]:
    """apt options reading only ``lines`` (a folder bound at REPO), never the image's lists."""
    options, bind = _private_state(context)
    (bind.source / "sources.list").write_text("\n".join(lines) + "\n")
    options += [
        "-o",
        f"Dir::Etc::SourceList={REPO}/sources.list",
        "-o",
        "Dir::Etc::SourceParts=-",
    ]
    return options, bind


def apt_unlocked(context: BuildContext, packages: tuple[str, ...]) -> Seen:
    if context.options.mirror:
        lines = fetch_lines(context)
        options, bind = _private_sources(context, lines)
        sandbox = context.sandbox.with_binds(bind, *_file_binds(lines))
    else:  # the image's own sources
        options, bind = _private_state(context)
        sandbox = context.sandbox.with_binds(bind)
    sandbox.run(_apt_command(options, list(packages)))
    return _harvest(context, bind.source / "archives")


def _harvest(context: BuildContext, folder: Path) -> Seen:
    """Move the .debs apt downloaded into ``folder`` into the package cache."""
    return context.cache.harvest(folder) if downloads_only(folder) else {}


def downloads_only(folder: Path) -> bool:
    """Whether ``folder`` (where a bake's apt downloaded) can be harvested, once each
    ``*.deb`` in it that is not a regular file is removed. The image's scripts could write
    there while apt ran: a symlink (the folder, or a ``*.deb`` in it) must never lead the
    package cache to a host file."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    with Root(folder) as archives:
        for name in archives.listdir():
            if name.endswith(".deb") and not stat.S_ISREG(archives.lstat(name).st_mode):
                archives.remove(name)
    return True


def _file_binds(lines: list[str]) -> list[Bind]:
    """file:// repositories must be visible at the same path inside the root."""
    binds = []
    for line in lines:
        for word in line.split():
            if word.startswith("file:"):
                path = Path("/" + word[len("file:") :].lstrip("/"))
                binds.append(Bind(path, str(path)))
    return binds


def apt_locked(context: BuildContext, lock: Lock, wanted: list[Deb]) -> Seen:
    context.cache.fetch(lock.packages, fetch_lines(context), context.home.tmp)
    repo = context.build_dir / "apt" / "repo"
    context.cache.make_repo(lock.packages, repo, os_codename(context.root) or "stable")
    options, bind = _private_sources(context, [f"deb [trusted=yes] file:{REPO}/repo ./"])
    context.sandbox.with_binds(bind).run(_apt_command(options, [spec(d) for d in wanted]))
    return {deb.key: deb for deb in lock.packages}


def unpack_locked(context: BuildContext, wanted: list[Deb]) -> list[Deb]:
    context.cache.fetch(wanted, fetch_lines(context), context.home.tmp)
    for deb in wanted:
        proc.run(["dpkg-deb", "--extract", str(context.cache.path(deb.sha256)), str(context.root)])
    return wanted


@dataclass(frozen=True)
class Candidate:
    name: str
    version: str
    architecture: str
    sha256: str
    filename: str  # path of the .deb on the mirror


def candidate(package: str) -> Candidate:
    """What the host's apt would install for ``package``: version and .deb sha256."""
    try:
        text = proc.output(["apt-cache", "show", "--no-all-versions", package])
    except proc.CommandError:
        raise BadInput(
            f"package {package!r} is unknown to the host's apt",
            hint="check the name, or run apt-get update on the host",
        ) from None
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


def unpack(context: BuildContext, packages: tuple[str, ...]) -> list[Deb]:
    """For roots without dpkg (scratch): resolve with the host's apt, unpack with dpkg-deb.

    Dependencies and maintainer scripts are not run: this is for static tools such as
    busybox-static. A .deb already in the package cache (or the host's) needs no network.
    """
    cache = context.cache
    out = []
    for package in packages:
        found = candidate(package)
        deb = Deb(found.name, found.architecture, found.version, found.sha256)
        if not cache.has(deb):
            local = find_archived(HOST_ARCHIVES, deb)  # apt names it 1%3a..., the pool 1...
            if local is not None and file_sha256(local) == found.sha256:
                cache.add(local, deb.key)
            else:
                cache.fetch([deb], fetch_lines(context), context.home.tmp)
        _extract_deb(context, cache.path(deb.sha256))
        out.append(deb)
    return out


@contextmanager
def _image_folder(root: Path, path: str) -> Iterator[Path | None]:
    """A folder of the image, resolved inside it and held open, as a path host tools can
    use (None when the image has none)."""
    with Root(root) as image:
        try:
            fd = image.open(path, DIR)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        try:
            yield Path(f"/proc/{os.getpid()}/fd/{fd}")
        finally:
            os.close(fd)


def _extract_deb(context: BuildContext, deb: Path) -> None:
    """A .deb's files into the root, entry by entry through kiln.rootpath: a symlink a
    parent image planted (``/usr/local -> /host/dir``) leads inside the image, not out."""
    data = proc.run(["dpkg-deb", "--fsys-tarfile", str(deb)]).stdout
    with tempfile.TemporaryDirectory(dir=context.home.tmp, prefix="deb-") as folder:
        tar = Path(folder) / "data.tar"
        tar.write_bytes(data)
        apply_tar(tar, context.root)


def installed(root: Path) -> list[tuple[str, str, str]]:
    """(name, version, architecture) of every package dpkg knows in ``root``."""
    if not has_dpkg(root):
        return []
    with _image_folder(root, "/var/lib/dpkg") as admindir:
        text = proc.output(
            [
                "dpkg-query",
                f"--admindir={admindir}",
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


def _where(context: BuildContext) -> str:
    return f"{context.recipe.name}: {EXTENDED_STATES}"


def mark_locked(context: BuildContext, wanted: Iterable[Deb], named: Iterable[str] = ()) -> None:
    """After a locked install (every package named to apt, so none marked): the marks an
    unlocked install would have left. Each package this bake installed is marked as its
    lock line says; one the parent holds keeps the parent's mark, unless the recipe names
    it (apt marks a package it is asked for manual, installed or not)."""
    lock = context.lock
    assert lock is not None
    native = native_architecture(lock.packages)
    with Root(context.root) as image:
        marks, before = read_marks(image, _where(context), native)
        apply_lock_marks(marks, wanted, named, native)
        write_marks(image, marks.values(), before)


@dataclass(frozen=True)
class Record:
    """What the image holds, and its distribution (``debian-bookworm``) for package URLs."""

    packages: list[Deb]
    distro: str | None


def record(context: BuildContext, seen: Seen, unpacked: Iterable[Deb]) -> Record:
    """What the image holds, with each .deb's sha256 where kiln has seen the file
    (``seen``) and apt's automatic mark; apt's extended_states is rewritten in canonical
    order. ``unpacked``: what was unpacked without dpkg."""
    codename = os_codename(context.root)
    distro = f"debian-{codename}" if codename else None
    if not has_dpkg(context.root):
        known = {deb.key: deb for deb in [*context.parent_packages, *unpacked]}
        return Record(sorted(known.values()), distro)
    known = {deb.key: deb for deb in context.parent_packages}
    known.update(seen)
    debs = [known.get(key) or Deb(key[0], key[2], key[1], "") for key in installed(context.root)]
    native = native_architecture(debs)
    with Root(context.root) as image:
        marks, before = read_marks(image, _where(context), native)
        write_marks(image, marks.values(), before)
    packages = [
        replace(deb, auto=(mark := marks.get(apt_key(deb, native))) is not None and mark.auto)
        for deb in debs
    ]
    return Record(packages, distro)


def verify_lock(context: BuildContext, packages: list[Deb]) -> None:
    """A locked bake must hold exactly the locked packages, no more, no fewer."""
    if context.lock is None:
        return
    got = {(d.name, d.architecture, d.version) for d in packages}
    want = {(d.name, d.architecture, d.version) for d in context.lock.packages}
    if got != want:
        extra = sorted(got - want)
        missing = sorted(want - got)
        raise KilnError(
            "the image does not hold exactly the locked packages: "
            f"not in the lock: {[' '.join(e) for e in extra] or 'none'}; "
            f"locked but missing: {[' '.join(m) for m in missing] or 'none'}",
            hint=f"if the recipe changed, re-resolve with: kiln lock --update "
            f"{context.recipe.path}",
        )
