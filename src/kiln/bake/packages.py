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
import re
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln import proc
from kiln.apt.sources import mirror_lines, os_codename
from kiln.bake.context import BuildContext
from kiln.bake.debcache import find_archived
from kiln.digests import file_sha256
from kiln.errors import BadInput, KilnError
from kiln.recipe.lockfile import ARCHITECTURE, PACKAGE_NAME, Deb, Lock
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


def install(context: BuildContext, packages: tuple[str, ...]) -> None:
    lock = context.lock
    if lock is not None:
        have = {deb.key for deb in context.parent_packages}
        wanted = [deb for deb in lock.packages if deb.key not in have]
        if wanted and not has_apt(context.root):
            unpack_locked(context, wanted)
            return
        if wanted:
            apt_locked(context, lock, wanted)
        if (wanted or packages) and has_apt(context.root):
            mark_locked(context, wanted, packages)
        return
    if not packages:
        return
    if has_apt(context.root):
        apt_unlocked(context, packages)
    else:
        unpack(context, packages)


def _apt_script(options: list[str], packages: list[str]) -> str:
    opts = " ".join(APT_OPTIONS + options)
    return (
        f"mkdir -p {REPO}/lists/partial {REPO}/archives/partial && apt-get {opts} update && "
        f"apt-get {opts} install --yes {' '.join(packages)}"
    )


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


def apt_unlocked(context: BuildContext, packages: tuple[str, ...]) -> None:
    if context.options.mirror:
        lines = fetch_lines(context)
        options, bind = _private_sources(context, lines)
        sandbox = context.sandbox.with_binds(bind, *_file_binds(lines))
    else:  # the image's own sources
        options, bind = _private_state(context)
        sandbox = context.sandbox.with_binds(bind)
    sandbox.run(["/bin/sh", "-c", _apt_script(options, list(packages))])
    _harvest(context, bind.source / "archives")


def _harvest(context: BuildContext, folder: Path) -> None:
    """Move the .debs apt downloaded into ``folder`` into the package cache."""
    if downloads_only(folder):
        context.debs.update(context.cache.harvest(folder))


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


def apt_locked(context: BuildContext, lock: Lock, wanted: list[Deb]) -> None:
    context.cache.fetch(lock.packages, fetch_lines(context), context.home.tmp)
    repo = context.build_dir / "apt" / "repo"
    context.cache.make_repo(lock.packages, repo, os_codename(context.root) or "stable")
    options, bind = _private_sources(context, [f"deb [trusted=yes] file:{REPO}/repo ./"])
    context.sandbox.with_binds(bind).run(
        ["/bin/sh", "-c", _apt_script(options, [spec(d) for d in wanted])]
    )
    context.debs.update({deb.key: deb for deb in lock.packages})


def unpack_locked(context: BuildContext, wanted: list[Deb]) -> None:
    context.cache.fetch(wanted, fetch_lines(context), context.home.tmp)
    for deb in wanted:
        proc.run(["dpkg-deb", "--extract", str(context.cache.path(deb.sha256)), str(context.root)])
        context.debs[deb.key] = deb
        context.packages.append(deb)


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


def unpack(context: BuildContext, packages: tuple[str, ...]) -> None:
    """For roots without dpkg (scratch): resolve with the host's apt, unpack with dpkg-deb.

    Dependencies and maintainer scripts are not run: this is for static tools such as
    busybox-static. A .deb already in the package cache (or the host's) needs no network.
    """
    cache = context.cache
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
        context.debs[deb.key] = deb
        context.packages.append(deb)


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


EXTENDED_STATES = "/var/lib/apt/extended_states"
MAX_EXTENDED_STATES = 8 << 20  # ~100,000 marks; a real system has a few thousand
FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
KNOWN_FIELDS = ("Package", "Architecture", "Auto-Installed")


@dataclass
class Mark:
    """One stanza of apt's extended_states: a package (by name and architecture, as apt
    names it: an ``all`` package under the native architecture), whether apt installed it
    automatically, and any other fields in their order (kept, as apt keeps them)."""

    package: str
    architecture: str
    auto: bool
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.package, self.architecture)


def parse_extended_states(data: bytes, where: str, native: str) -> dict[tuple[str, str], Mark]:
    """apt's extended_states, read as the hostile text it may be (a step can write it):
    every stanza must name a valid package, architecture (apt's default: ``native``) and an
    Auto-Installed of 0 or 1; anything else is an error naming ``where`` and the line."""

    def bad(number: int, message: str) -> KilnError:
        return KilnError(
            f"{where}:{number}: {message}",
            hint="apt writes stanzas of 'Package:', 'Architecture:' and 'Auto-Installed:' "
            "lines; fix or remove the step that wrote this file (apt-mark changes it safely)",
        )

    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise bad(data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None
    marks: dict[tuple[str, str], Mark] = {}
    stanza: list[tuple[int, str, str]] = []

    def close(end: int) -> None:
        if not stanza:
            return
        fields = {name: value for _number, name, value in stanza}
        first = stanza[0][0]
        package = fields.get("Package")
        if package is None:
            raise bad(first, "a stanza without a Package field")
        if not PACKAGE_NAME.fullmatch(package):
            raise bad(first, f"{package!r} is not a Debian package name")
        architecture = fields.get("Architecture", native)
        if not ARCHITECTURE.fullmatch(architecture):
            raise bad(first, f"{package}: {architecture!r} is not a Debian architecture")
        auto = fields.get("Auto-Installed", "0")
        if auto not in ("0", "1"):
            raise bad(first, f"{package}: Auto-Installed is {auto!r}, not 0 or 1")
        extra = [(name, value) for _n, name, value in stanza if name not in KNOWN_FIELDS]
        mark = Mark(package, architecture, auto == "1", extra)
        if mark.key in marks:
            raise bad(first, f"{package} ({architecture}) has a second stanza")
        marks[mark.key] = mark
        stanza.clear()

    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            close(number)
            continue
        if "\0" in line or not line.isprintable():
            raise bad(number, "a line holds only printable text (no NUL or control bytes)")
        if line[0] in " \t":
            if not stanza:
                raise bad(number, "a continuation line outside a field")
            at, name, value = stanza[-1]
            if name in KNOWN_FIELDS:
                raise bad(number, f"{name} holds one line")
            stanza[-1] = (at, name, value + "\n" + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not FIELD.fullmatch(name):
            raise bad(number, f"expected 'Field: value', not {line[:60]!r}")
        if any(name == other for _n, other, _v in stanza):
            raise bad(number, f"{name} twice in one stanza")
        stanza.append((number, name, value.strip()))
    close(len(lines))
    return marks


def render_extended_states(marks: Iterable[Mark]) -> bytes:
    """The canonical file: stanzas sorted by (Package, Architecture) in apt's own layout;
    a package marked manual with nothing else to say has no stanza (apt drops those too)."""
    out = []
    for mark in sorted(marks, key=lambda m: m.key):
        if not mark.auto and not mark.extra:
            continue
        out.append(f"Package: {mark.package}\nArchitecture: {mark.architecture}\n")
        out.append(f"Auto-Installed: {1 if mark.auto else 0}\n")
        out.extend(f"{name}: {value}\n" for name, value in mark.extra)
        out.append("\n")
    return "".join(out).encode()


def native_architecture(debs: Iterable[Deb]) -> str:
    """The architecture apt files an ``all`` package under: dpkg's own, else the most
    common one, else the host's."""
    debs = list(debs)
    for deb in debs:
        if deb.name == "dpkg" and deb.architecture != "all":
            return deb.architecture
    counts = Counter(deb.architecture for deb in debs if deb.architecture != "all")
    if counts:
        return counts.most_common(1)[0][0]
    return proc.output(["dpkg", "--print-architecture"]).strip()


def apt_key(deb: Deb, native: str) -> tuple[str, str]:
    """Where apt keeps the mark of ``deb``."""
    return (deb.name, native if deb.architecture == "all" else deb.architecture)


def read_marks(image: Root, where: str, native: str) -> tuple[dict[tuple[str, str], Mark], bytes]:
    """The root's marks and the file's bytes (none when it has no file)."""
    try:
        data = image.read_bytes(EXTENDED_STATES, MAX_EXTENDED_STATES)
    except (FileNotFoundError, NotADirectoryError):
        return {}, b""
    except BadInput as exc:
        raise KilnError(
            f"{where}: {exc.message}", hint="a step made it too large or not a regular file"
        ) from None
    return parse_extended_states(data, where, native), data


def write_marks(image: Root, marks: Iterable[Mark], before: bytes) -> None:
    """Write the canonical file when it differs from what the root holds (so a child that
    changed no mark copies nothing up); no stanza at all means no file, as in a fresh root."""
    data = render_extended_states(marks)
    if not data:
        if image.exists(EXTENDED_STATES):
            image.remove(EXTENDED_STATES)
        return
    if data == before:
        return
    image.mkdirs(EXTENDED_STATES.rsplit("/", 1)[0])
    image.write_file(EXTENDED_STATES, data, 0o644)


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


def apply_lock_marks(
    marks: dict[tuple[str, str], Mark], wanted: Iterable[Deb], named: Iterable[str], native: str
) -> None:
    """:func:`mark_locked`'s decision, on the marks read from the root."""
    for deb in wanted:
        key = apt_key(deb, native)
        if deb.auto:
            marks.setdefault(key, Mark(key[0], key[1], True)).auto = True
        elif key in marks:
            marks[key].auto = False
    for name in named:
        package, _, qualifier = name.split("=", 1)[0].partition(":")
        key = (package, qualifier or native)
        if key in marks:
            marks[key].auto = False


def record(context: BuildContext) -> None:
    """What the image holds, with each .deb's sha256 where kiln has seen the file and
    apt's automatic mark; apt's extended_states is rewritten in canonical order."""
    codename = os_codename(context.root)
    context.distro = f"debian-{codename}" if codename else None
    if not has_dpkg(context.root):
        known = {deb.key: deb for deb in [*context.parent_packages, *context.packages]}
        context.packages = sorted(known.values())
        return
    known = {deb.key: deb for deb in context.parent_packages}
    known.update(context.debs)
    debs = [known.get(key) or Deb(key[0], key[2], key[1], "") for key in installed(context.root)]
    native = native_architecture(debs)
    with Root(context.root) as image:
        marks, before = read_marks(image, _where(context), native)
        write_marks(image, marks.values(), before)
    context.packages = [
        replace(deb, auto=(mark := marks.get(apt_key(deb, native))) is not None and mark.auto)
        for deb in debs
    ]


def verify_lock(context: BuildContext) -> None:
    """A locked bake must hold exactly the locked packages, no more, no fewer."""
    if context.lock is None:
        return
    got = {(d.name, d.architecture, d.version) for d in context.packages}
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
