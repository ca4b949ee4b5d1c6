"""The Packages indexes of a set of apt sources, fetched by a private apt and cached.

One folder per set of sources lines, under ``$KILN_HOME/cache/apt-indexes/<sha256 of the
sorted lines>/``: its own ``sources.list``, apt's lists, cache and an empty dpkg status,
so the host's apt state is neither read nor changed. apt itself fetches and checks
(``[trusted=yes]``, ``signed-by``, the hashes in each Release file), exactly as the
image's own apt would; kiln then reads what apt kept:

- each suite's Release (or InRelease) file through python-debian: Origin, Label, Suite,
  Codename, and whether it is a security suite (kiln.apt.release);
- each Packages index, once: the newest version of every package and architecture with
  the .deb's Filename, SHA256 and Size, kept beside the lists as ``parsed/<list>.json``
  under the index file's size and mtime, so a warm run never parses a big index again;
- all of them merged into ``view.json``: per package and architecture the newest version
  any suite offers, and from which suite (a security suite first when two offer the same
  version), and the newest any security suite offers (a point release may carry a newer
  version than the security suite's fix, which is still a security update for an image
  older than that fix). That file is all a warm ``kiln outdated`` or ``kiln where`` reads.

An index is fetched again when the last fetch is older than the policy's
``[freshness] index_max_age``; ``refresh`` forces a fetch and ``offline`` never fetches.
What apt serves is bounded on the way in (kiln.apt.packages reads each index within its
limits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln import locks, proc
from kiln.apt import versions
from kiln.apt.packages import opened, parse_packages
from kiln.apt.release import MAX_RELEASE, Release
from kiln.apt.release import parse as parse_release
from kiln.atomic import write_atomic
from kiln.errors import BadInput, KilnError
from kiln.times import second

FORMAT = 2  # of parsed/*.json and view.json
MAX_LINES = 64  # sources lines in one set
TARGET_FORMAT = "$(FILENAME)\t$(METAKEY)\t$(IDENTIFIER)\t$(REPO_URI)\t$(ARCHITECTURE)"


@dataclass(frozen=True)
class Available:
    """The newest version of a package the sources offer, and where its .deb is."""

    package: str
    architecture: str
    version: str
    suite: str  # the suite's codename (else its Suite), as a sources line names it
    security: bool
    filename: str  # the .deb's path below ``uri`` (pool/main/k/kiln-demo/...)
    sha256: str
    size: int
    uri: str  # the repository, as its sources line names it

    @property
    def url(self) -> str:
        return self.uri.rstrip("/") + "/" + self.filename.removeprefix("./")


@dataclass(frozen=True)
class Suite:
    release: Release
    uri: str
    index: str  # the Packages file apt keeps

    def to_json(self) -> dict[str, Any]:
        return {**self.release.to_json(), "uri": self.uri, "index": self.index}


@dataclass
class View:
    """What a set of sources offers: per package, the newest version per architecture."""

    folder: Path
    lines: tuple[str, ...]
    checked: datetime
    suites: list[Suite]
    packages: dict[str, list[list[Any]]]  # name -> [[arch, version, suite#, file, sha, size]]
    security: dict[str, list[list[Any]]]  # the same, from security suites alone
    _best: dict[tuple[str, str, bool], Available | None] = field(default_factory=dict, repr=False)
    # (name, arch, installed version) -> 0 current, 1 an update, 2 a security update
    pending: dict[tuple[str, str, str], int] = field(default_factory=dict, repr=False)

    def best(self, package: str, architecture: str, security: bool = False) -> Available | None:
        """The newest version of ``package`` for ``architecture`` (or ``all``) any suite
        offers; with ``security``, any security suite."""
        key = (package, architecture, security)
        try:
            return self._best[key]
        except KeyError:
            found = self._best[key] = self._find(package, architecture, security)
            return found

    def _find(self, package: str, architecture: str, security: bool) -> Available | None:
        entries = (self.security if security else self.packages).get(package)
        if not entries:
            return None
        found: list[Any] | None = None
        for entry in entries:
            if entry[0] != architecture and entry[0] != "all":
                continue
            if found is None or versions.compare(entry[1], found[1]) > 0:
                found = entry
        if found is None:
            return None
        arch, version, number, filename, sha256, size = found
        suite = self.suites[number]
        return Available(
            package,
            arch,
            version,
            suite.release.name,
            suite.release.security,
            filename,
            sha256,
            size,
            suite.uri,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "lines": list(self.lines),
            "checked": second(self.checked),
            "suites": [s.to_json() for s in self.suites],
        }


def cache_root(home_root: Path) -> Path:
    return home_root / "cache" / "apt-indexes"


def key(lines: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(lines))).encode()).hexdigest()


def folder_of(root: Path, lines: Iterable[str]) -> Path:
    return root / key(lines)


def _check_lines(lines: Sequence[str]) -> tuple[str, ...]:
    if not lines:
        raise BadInput("no apt sources to read Packages indexes from")
    if len(lines) > MAX_LINES:
        raise BadInput(f"{len(lines)} apt sources lines; kiln reads at most {MAX_LINES}")
    for line in lines:
        if "\n" in line or len(line) > 4096 or not line.startswith("deb "):
            raise BadInput(f"not an apt sources line: {line[:200]!r}")
    return tuple(sorted(set(lines)))


# --- fetching ---


def _apt_options(folder: Path, arch: str) -> list[str]:
    return [
        "-o",
        f"Dir::Etc::SourceList={folder}/sources.list",
        "-o",
        "Dir::Etc::SourceParts=-",
        "-o",
        f"Dir::State::Lists={folder}/lists",
        "-o",
        f"Dir::Cache={folder}/cache",
        "-o",
        f"Dir::State::status={folder}/status",
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        f"APT::Architecture={arch}",
        "-o",
        "Acquire::GzipIndexes=false",
        "-o",
        "Acquire::Languages=none",
        "-o",
        "Acquire::Retries=2",
    ]


def host_arch() -> str:
    return proc.output(["dpkg", "--print-architecture"]).strip()


def fetch(folder: Path, lines: Sequence[str], now: datetime) -> None:
    """``apt-get update`` of ``lines`` with the folder's own state; any failure is one."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "sources.list", ("\n".join(lines) + "\n").encode())
    if not (folder / "status").exists():
        write_atomic(folder / "status", b"")
    arch = host_arch()
    options = _apt_options(folder, arch)
    try:
        proc.run(["apt-get", *options, "--error-on=any", "update"])
    except proc.CommandError as exc:
        raise KilnError(
            f"apt could not fetch the Packages indexes of {', '.join(lines)}:\n"
            f"{proc.tail(exc.output, 10)}",
            hint="check that the repositories answer; kiln outdated --offline reads the "
            "indexes fetched before",
        ) from None
    targets = proc.output(["apt-get", *options, "indextargets", "--format", TARGET_FORMAT])
    write_atomic(
        folder / "fetched.json",
        json.dumps(
            {"format": FORMAT, "at": now.isoformat(), "arch": arch, "targets": targets}
        ).encode(),
    )


def _targets(folder: Path) -> tuple[datetime, list[tuple[Path, Path | None, str]]] | None:
    """When the folder was fetched, and (Packages file, its Release file, repo URI) each."""
    try:
        data = json.loads((folder / "fetched.json").read_bytes())
        at = datetime.fromisoformat(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lists = (folder / "lists").resolve()
    out = []
    for line in str(data.get("targets", "")).splitlines():
        fields = line.split("\t")
        if len(fields) != 5 or fields[2] != "Packages":
            continue
        filename, metakey, _identifier, repo, _arch = fields
        path = Path(filename)
        if path.parent != lists or not path.is_file():
            continue  # apt names only files in its lists; an index that did not come
        stem = path.name[: -len(metakey.replace("/", "_"))] if metakey else ""
        release = next(
            (lists / f"{stem}{n}" for n in ("InRelease", "Release") if (lists / f"{stem}{n}")
             .is_file()),
            None,
        )  # fmt: skip
        out.append((path, release, repo))
    return at, out


# --- the compact forms ---


def _parsed(folder: Path, index: Path) -> dict[str, dict[str, list[Any]]]:
    """The index's compact form, parsed once per size and mtime of the file."""
    st = index.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    saved = folder / "parsed" / f"{index.name}.json"
    try:
        data = json.loads(saved.read_bytes())
        if data.get("format") == FORMAT and data.get("stamp") == stamp:
            return dict(data["packages"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with opened(index) as handle:
        packages = parse_packages(handle, str(index))
    write_atomic(
        saved, json.dumps({"format": FORMAT, "stamp": stamp, "packages": packages}).encode()
    )
    return packages


def _release(path: Path | None) -> Release:
    if path is None:
        return Release()
    with path.open("rb") as handle:
        data = handle.read(MAX_RELEASE + 1)
    return parse_release(data, str(path))


def build_view(folder: Path, lines: tuple[str, ...]) -> View | None:
    """Merge the folder's parsed indexes into view.json (None: never fetched)."""
    found = _targets(folder)
    if found is None:
        return None
    at, targets = found
    suites: list[Suite] = []
    merged: dict[str, dict[str, list[Any]]] = {}
    security: dict[str, dict[str, list[Any]]] = {}
    for number, (index, release_file, repo) in enumerate(targets):
        release = _release(release_file)
        suites.append(Suite(release, repo, index.name))
        for name, by_arch in _parsed(folder, index).items():
            for arch, (version, filename, sha256, size) in by_arch.items():
                entry = [arch, version, number, filename, sha256, size]
                into = merged.setdefault(name, {})
                have = into.get(arch)
                order = versions.compare(version, have[1]) if have is not None else 1
                if order > 0 or (
                    order == 0 and have is not None and release.security
                    and not suites[have[2]].release.security
                ):  # fmt: skip
                    into[arch] = entry
                if release.security:
                    mine = security.setdefault(name, {})
                    if arch not in mine or versions.compare(version, mine[arch][1]) > 0:
                        mine[arch] = entry
    packages = {name: list(by_arch.values()) for name, by_arch in merged.items()}
    fixes = {name: list(by_arch.values()) for name, by_arch in security.items()}
    view = View(folder, lines, at, suites, packages, fixes)
    write_atomic(
        folder / "view.json",
        json.dumps(
            {
                "format": FORMAT,
                "lines": list(lines),
                "checked": at.isoformat(),
                "suites": [{"release": s.release.to_json(), "uri": s.uri, "index": s.index}
                           for s in suites],
                "packages": packages,
                "security": fixes,
            }
        ).encode(),
    )  # fmt: skip
    return view


def load_view(folder: Path) -> View | None:
    """The view a fetch left in ``folder``, or None when there is none (never fetched)."""
    try:
        data = json.loads((folder / "view.json").read_bytes())
        if data.get("format") != FORMAT:
            return None
        suites = [
            Suite(Release.from_json(s["release"]), str(s["uri"]), str(s["index"]))
            for s in data["suites"]
        ]
        return View(
            folder,
            tuple(data["lines"]),
            datetime.fromisoformat(data["checked"]),
            suites,
            data["packages"],
            data["security"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached(root: Path, lines: Sequence[str]) -> View | None:
    """The view of ``lines`` as last fetched, never fetching (kiln where, the gate)."""
    if not lines:
        return None
    return load_view(folder_of(root, lines))


def view(
    root: Path,
    lines: Sequence[str],
    max_age: int,
    now: datetime,
    refresh: bool = False,
    offline: bool = False,
) -> View | None:
    """The indexes of ``lines``: fetched first when older than ``max_age`` seconds (or
    with ``refresh``), never with ``offline`` (then None when none were ever fetched)."""
    checked = _check_lines(lines)
    folder = folder_of(root, checked)
    current = load_view(folder)
    fresh = current is not None and (now - current.checked).total_seconds() < max_age
    if offline or (fresh and not refresh):
        return current
    folder.mkdir(parents=True, exist_ok=True)
    with locks.locked(folder / "lock"):
        current = load_view(folder)  # a rival may have fetched while we waited
        if current is not None and current.checked >= now:
            return current
        fetch(folder, checked, now)
        return build_view(folder, checked)
