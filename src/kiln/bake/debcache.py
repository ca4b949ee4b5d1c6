"""The package cache: every .deb a bake installs, kept by sha256 under cache/debs.

``<sha256>.deb`` is the file; ``by-name/<name>_<version>_<arch>.deb`` is a hard link to
it under the name apt gives a .deb, so apt and mmdebstrap can be handed cached packages
directly. From the cache kiln builds a small flat apt repository holding exactly the
packages of a lock, which makes a locked rebuild independent of the mirror.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from kiln import locks, proc
from kiln.digests import file_sha256
from kiln.errors import KilnError
from kiln.recipe.lockfile import Deb

CONTROL_FIELDS = "${Package}\t${Version}\t${Architecture}\n"


def _moved(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target``; False when they are on different file systems
    (an overlay mount counts as one of its own)."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def parse_filename(filename: str) -> tuple[str, str, str] | None:
    """name_version_arch.deb -> (name, version, arch), or None for other names."""
    if not filename.endswith(".deb") or filename.count("_") != 2:
        return None
    name, version, arch = filename[: -len(".deb")].split("_")
    return name, unquote(version), arch


def find_archived(folder: Path, deb: Deb) -> Path | None:
    """A file of ``deb`` in an apt archives folder under any name apt or kiln gives it
    (an epoch's colon as %3a or %3A, or left out as in the pool), or None."""
    for name in deb.filenames:
        path = folder / name
        if path.is_file():
            return path
    return None


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name = root / "by-name"

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.deb"

    def has(self, deb: Deb) -> bool:
        return self.path(deb.sha256).is_file()

    def add(
        self, source: Path, known: tuple[str, str, str] | None = None, move: bool = False
    ) -> Deb:
        """Keep ``source`` in the cache; ``move`` renames it in when it is the caller's to
        give away and on the same file system (else, as without ``move``, it is copied)."""
        self.by_name.mkdir(parents=True, exist_ok=True)
        digest = file_sha256(source)
        if known is None:
            fields = proc.output(
                ["dpkg-deb", "--show", f"--showformat={CONTROL_FIELDS}", str(source)]
            )
            name, version, arch = fields.rstrip("\n").split("\t")
        else:
            name, version, arch = known
        deb = Deb(name, arch, version, digest)
        target = self.path(digest)
        if not target.exists() and not (move and _moved(source, target)):
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        link = self.by_name / deb.filename
        if not link.exists():
            tmp_link = link.with_name(f".{link.name}.tmp")
            tmp_link.unlink(missing_ok=True)
            os.link(target, tmp_link)
            os.replace(tmp_link, link)
        return deb

    def harvest(self, archives: Path) -> dict[tuple[str, str, str], Deb]:
        """Move every .deb apt left in ``archives`` (a root's, or a download folder) into
        the cache."""
        found: dict[tuple[str, str, str], Deb] = {}
        for path in sorted(archives.glob("*.deb")) if archives.is_dir() else []:
            deb = self.add(path, parse_filename(path.name), move=True)
            found[deb.key] = deb
        return found

    def stage(self, debs: Iterable[Deb], folder: Path) -> None:
        """Hard-link cached debs into ``folder`` under apt's names."""
        folder.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            target = folder / deb.filename
            if not target.exists():
                os.link(self.path(deb.sha256), target)

    def fetch(self, wanted: Iterable[Deb], mirror_lines: list[str], tmp: Path) -> None:
        """Download the wanted debs that are not cached, with a private apt, and check them.

        The private apt has its own lists and cache under ``tmp`` and reads only
        ``mirror_lines``: the host's apt state is neither used nor changed.
        """
        missing = sorted(deb for deb in wanted if not self.has(deb))
        if not missing:
            return
        with locks.scratch_dir(tmp, "fetch-") as folder:
            base = Path(folder)
            for sub in ("lists/partial", "cache/archives/partial", "etc", "download"):
                (base / sub).mkdir(parents=True)
            (base / "etc/sources.list").write_text("\n".join(mirror_lines) + "\n")
            (base / "status").write_text("")
            arch = host_arch()
            options = [
                "-o",
                f"Dir::Etc::SourceList={base}/etc/sources.list",
                "-o",
                "Dir::Etc::SourceParts=-",
                "-o",
                f"Dir::State::Lists={base}/lists",
                "-o",
                f"Dir::Cache={base}/cache",
                "-o",
                f"Dir::State::status={base}/status",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                f"APT::Architecture={arch}",
                "-o",
                "Acquire::Retries=2",
            ]
            proc.run(["apt-get", *options, "update"])
            names = [
                f"{deb.name}:{deb.architecture}={deb.version}"
                if deb.architecture != "all"
                else f"{deb.name}={deb.version}"
                for deb in missing
            ]
            try:
                proc.run(["apt-get", *options, "download", *names], cwd=base / "download")
            except proc.CommandError as exc:
                # apt stops at the first version it cannot find: ask for each one
                gone = [
                    deb
                    for deb, name in zip(missing, names, strict=True)
                    if not _served(options, name)
                ]
                raise Unserved(gone, proc.tail(exc.output, 10)) from None
            got = self.harvest(base / "download")
        for deb in missing:
            fetched = got.get(deb.key)
            if fetched is None or fetched.sha256 != deb.sha256:
                raise KilnError(
                    f"{deb.name} {deb.version} ({deb.architecture}) from the mirror has sha256 "
                    f"{fetched.sha256 if fetched else 'nothing'}, the lock says {deb.sha256}",
                    hint="the mirror serves a different file under the locked version",
                )

    def control(self, deb: Deb) -> str:
        """The package's control paragraph (read once, then kept beside the .deb)."""
        saved = self.root / "control" / deb.sha256
        if saved.is_file():
            return saved.read_text()
        text = proc.output(["dpkg-deb", "--field", str(self.path(deb.sha256))]).rstrip("\n")
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(f".{saved.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, saved)
        return text

    def make_repo(self, debs: Iterable[Deb], folder: Path, suite: str) -> str:
        """A flat apt repository of exactly ``debs``; returns its sources.list line.

        Its Release file names ``suite``: mmdebstrap picks the essential set with
        ?archive/?codename patterns, which match nothing in a repository without one.
        """
        debs = sorted(debs)
        self.stage(debs, folder)
        paragraphs = []
        for deb in debs:
            path = folder / deb.filename
            paragraphs.append(
                f"{self.control(deb)}\nFilename: ./{deb.filename}\n"
                f"Size: {path.stat().st_size}\nSHA256: {deb.sha256}\n"
            )
        index = "\n".join(paragraphs).encode()
        (folder / "Packages").write_bytes(index)
        arches = " ".join(sorted({d.architecture for d in debs} - {"all"}) or [host_arch()])
        (folder / "Release").write_text(
            f"Origin: kiln\nLabel: kiln package cache\nSuite: {suite}\nCodename: {suite}\n"
            f"Architectures: {arches} all\nSHA256:\n"
            f" {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
        )
        return f"deb [trusted=yes] copy://{folder} ./"


class Unserved(KilnError):
    """The mirror does not serve these locked versions (every one of them is listed)."""

    def __init__(self, debs: list[Deb], output: str) -> None:
        self.debs = debs
        listed = "".join(f"\n  {d.name} {d.version} ({d.architecture})" for d in debs)
        what = (
            f"the mirror no longer serves {len(debs)} locked package"
            f"{'s' if len(debs) != 1 else ''} missing from the package cache:{listed}"
            if debs
            else f"the locked packages could not be downloaded:\n{output}"
        )
        super().__init__(
            what,
            hint="point --mirror (or KILN_MIRROR) at a mirror or snapshot that has "
            "them, or re-resolve with 'kiln lock --update'",
        )


def _served(options: list[str], name: str) -> bool:
    """Whether the private apt's lists know ``name`` (name[:arch]=version)."""
    try:
        shown = proc.output(["apt-cache", *options, "show", name])
    except proc.CommandError:
        return False
    return bool(shown.strip())


def host_arch() -> str:
    return proc.output(["dpkg", "--print-architecture"]).strip()
