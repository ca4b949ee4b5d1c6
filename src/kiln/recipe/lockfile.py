"""Lock files: the exact resolved inputs of a recipe, as sorted, reviewable plain text.

    # kiln lock for web.toml: ...
    parent sha256:9ad2...
    source-date-epoch 1764086400
    package adduser all 3.134 0c3e...
    package libffi8 amd64 3.4.4-1 9d1b... auto

One ``package`` line per Debian package in the image (base images included): name,
architecture, version and the sha256 of the .deb, then ``auto`` when apt marked it
automatically installed (pulled in as a dependency) in the bake that resolved it. The file
sits beside the recipe as ``<recipe>.toml.lock``; it is part of the bake's cache key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from kiln.atomic import write_atomic
from kiln.errors import Problem, RecipeError
from kiln.recipe.limits import MAX_LOCK_BYTES, read_regular
from kiln.recipe.models import MAX_EPOCH

HEADER = (
    "# kiln lock for {recipe}: the exact inputs of its bake. "
    "Re-resolve with: kiln lock --update {recipe}"
)
SHA256 = re.compile(r"[0-9a-f]{64}")
# What dpkg allows in a package name, an architecture and a version; they become file names
# in the package cache, so nothing else may pass (no '/', no '..').
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{0,254}")
ARCHITECTURE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
VERSION = re.compile(r"(?:[0-9]{1,10}:)?[A-Za-z0-9][A-Za-z0-9.+~-]{0,254}")
EPOCH = re.compile(r"[0-9]{1,12}")
AUTO = "auto"  # the last word of a package line apt marked automatically installed


@dataclass(frozen=True, order=True)
class Deb:
    """One Debian package file: identity and content digest; ``auto`` when apt marked it
    automatically installed, which is no part of its identity (equality, order, key)."""

    name: str
    architecture: str
    version: str
    sha256: str
    auto: bool = field(default=False, compare=False)

    @property
    def filename(self) -> str:
        """The file name apt uses (an epoch's colon is quoted as %3a, lower case)."""
        return f"{self.name}_{apt_quote(self.version)}_{self.architecture}.deb"

    @property
    def filenames(self) -> tuple[str, ...]:
        """Every name a file of this package may have: apt's (%3a), the upper-case quoting
        older kiln wrote (%3A), and the pool's (no epoch at all)."""
        pool = self.version.split(":", 1)[1] if ":" in self.version else self.version
        names = [
            self.filename,
            f"{self.name}_{quote(self.version, safe='+~.-')}_{self.architecture}.deb",
            f"{self.name}_{pool}_{self.architecture}.deb",
        ]
        return tuple(dict.fromkeys(names))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.version, self.architecture)


@dataclass(frozen=True)
class Lock:
    parent: str | None  # manifest digest of the parent image, None for a base
    source_date_epoch: int
    packages: tuple[Deb, ...] = field(default=())
    digest: str = field(default="", compare=False)  # sha256 of the file it was read from

    def by_key(self) -> dict[tuple[str, str, str], Deb]:
        return {deb.key: deb for deb in self.packages}

    def render(self, recipe_name: str) -> str:
        lines = [HEADER.format(recipe=recipe_name)]
        lines.append(f"parent {self.parent or '-'}")
        lines.append(f"source-date-epoch {self.source_date_epoch}")
        for deb in sorted(self.packages, key=lambda d: (d.name, d.architecture)):
            auto = " auto" if deb.auto else ""
            lines.append(f"package {deb.name} {deb.architecture} {deb.version} {deb.sha256}{auto}")
        return "\n".join(lines) + "\n"


def apt_quote(version: str) -> str:
    """A version as apt quotes it in a file name: '%' and lower-case hex (1:2.0 -> 1%3a2.0)."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(version, safe="+~.-"))


def lock_path(recipe: Path) -> Path:
    return recipe.with_name(recipe.name + ".lock")


def write(path: Path, lock: Lock, recipe_name: str) -> None:
    write_atomic(path, lock.render(recipe_name).encode())


def parse(path: Path) -> Lock:
    """Read a lock file; every malformed line is reported with its line number."""
    problems: list[Problem] = []
    parent: str | None = None
    epoch: int | None = None
    packages: list[Deb] = []
    seen: set[tuple[str, str]] = set()

    def problem(number: int, message: str) -> None:
        problems.append(Problem(str(path), number, "", message))

    hint = f"regenerate it: kiln lock --update {path.name.removesuffix('.lock')}"
    data = read_regular(path, MAX_LOCK_BYTES, "lock file")
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        problem(
            data.count(b"\n", 0, exc.start) + 1,
            f"not UTF-8 text (byte {exc.start}): a lock file is plain text",
        )
        raise RecipeError(problems, hint=hint, what="lock file") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if "\0" in line or not line.isprintable():
            problem(number, "a lock line holds only printable text (no NUL or control bytes)")
            continue
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        fields = rest.split()
        if word == "parent" and len(fields) == 1:
            value = fields[0]
            if value != "-" and not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
                problem(number, f"parent must be a sha256 digest or '-', not {value!r}")
            parent = None if value == "-" else value
        elif word == "source-date-epoch" and len(fields) == 1 and EPOCH.fullmatch(fields[0]):
            epoch = int(fields[0])
            if epoch > MAX_EPOCH:
                problem(number, f"source-date-epoch {epoch} is after the year 9999")
        elif word == "package" and (len(fields) == 4 or (len(fields) == 5 and fields[4] == AUTO)):
            name, arch, version, digest = fields[:4]
            if not PACKAGE_NAME.fullmatch(name):
                problem(number, f"{name!r} is not a Debian package name")
            elif not ARCHITECTURE.fullmatch(arch):
                problem(number, f"{name}: {arch!r} is not a Debian architecture")
            elif not VERSION.fullmatch(version):
                problem(number, f"{name}: {version!r} is not a Debian version")
            elif not SHA256.fullmatch(digest):
                problem(number, f"{name}: {digest!r} is not a sha256 hex digest")
            elif (name, arch) in seen:
                problem(number, f"{name} ({arch}) is locked twice")
            else:
                seen.add((name, arch))
                packages.append(Deb(name, arch, version, digest, auto=len(fields) == 5))
        else:
            problem(
                number,
                "expected 'parent DIGEST', 'source-date-epoch SECONDS' or "
                "'package NAME ARCH VERSION SHA256 [auto]'",
            )
    if epoch is None:
        problem(0, "the lock has no source-date-epoch line")
    if problems:
        raise RecipeError(problems[:50], hint=hint, what="lock file")
    assert epoch is not None
    return Lock(parent, epoch, tuple(sorted(packages)), hashlib.sha256(data).hexdigest())


def stale(lock: Lock, packages: Iterable[str], parent_digest: str | None) -> str | None:
    """Why ``lock`` no longer fits its recipe (its ``[packages] apt`` and its parent's
    digest now), or None when it still does."""
    if lock.parent != parent_digest:
        return f"it was made for parent {lock.parent or 'none'}, the parent is now " + (
            parent_digest or "none"
        )
    locked = {deb.name for deb in lock.packages}
    missing = [p for p in packages if re.split(r"[:=]", p)[0] not in locked]
    if missing:
        return f"the recipe asks for {', '.join(missing)}, which the lock does not hold"
    return None


@dataclass(frozen=True)
class LockDiff:
    added: list[Deb]
    removed: list[Deb]
    changed: list[tuple[Deb, Deb]]  # old, new

    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        def one(deb: Deb) -> dict[str, str]:
            return {"name": deb.name, "architecture": deb.architecture, "version": deb.version}

        return {
            "added": [one(d) for d in self.added],
            "removed": [one(d) for d in self.removed],
            "changed": [
                {"name": n.name, "architecture": n.architecture, "old": o.version, "new": n.version}
                for o, n in self.changed
            ],
        }

    def lines(self) -> list[str]:
        out = [f"+ {d.name} {d.version} ({d.architecture})" for d in self.added]
        out += [f"- {d.name} {d.version} ({d.architecture})" for d in self.removed]
        out += [
            f"~ {o.name} {o.version} -> {n.version} ({n.architecture})" for o, n in self.changed
        ]
        return out


def differs(old: Deb, new: Deb) -> bool:
    """Another version, or another .deb of it; a sha256 not known on one side (an imported
    image's packages) is unknown, not different."""
    if old.version != new.version:
        return True
    return bool(old.sha256 and new.sha256 and old.sha256 != new.sha256)


def diff(old: Iterable[Deb], new: Iterable[Deb]) -> LockDiff:
    before = {(d.name, d.architecture): d for d in old}
    after = {(d.name, d.architecture): d for d in new}
    return LockDiff(
        added=[after[k] for k in sorted(after.keys() - before.keys())],
        removed=[before[k] for k in sorted(before.keys() - after.keys())],
        changed=[
            (before[k], after[k])
            for k in sorted(before.keys() & after.keys())
            if differs(before[k], after[k])
        ],
    )


def rebase(
    lock: Lock, old_parent: Iterable[Deb], new_parent_digest: str, new_parent: Iterable[Deb]
) -> tuple[Lock, LockDiff]:
    """``lock`` moved onto a new parent: its parent digest is the new one, the packages it
    inherited from the old parent (the same name, architecture and version) are replaced by
    the new parent's, and the recipe's own packages are kept (one the old parent had and
    the image no longer holds stays out). Returns the new lock and what changed."""
    inherited = {(d.name, d.architecture, d.version) for d in old_parent}
    had = {(d.name, d.architecture) for d in old_parent}
    held = {(d.name, d.architecture) for d in lock.packages}
    own = {
        (d.name, d.architecture): d
        for d in lock.packages
        if (d.name, d.architecture, d.version) not in inherited
    }
    marks = {(d.name, d.architecture): d.auto for d in lock.packages}
    packages: dict[tuple[str, str], Deb] = {}
    for deb in new_parent:
        key = (deb.name, deb.architecture)
        if key in had and key not in held:
            continue  # the image removed what its old parent had
        packages[key] = replace(deb, auto=marks.get(key, deb.auto))  # apt's mark in the image
    packages.update(own)  # the recipe's own choice wins; a bake that cannot hold it fails
    new = Lock(new_parent_digest, lock.source_date_epoch, tuple(sorted(packages.values())))
    return new, diff(lock.packages, new.packages)


def bump(lock: Lock, newer: Iterable[Deb]) -> tuple[Lock, LockDiff]:
    """``lock`` with some packages moved to newer .debs (kiln refresh): each of ``newer``
    replaces the locked package of its name and architecture (of its name alone when the
    lock holds that name once: a package may move to or from ``all``); one the lock does
    not hold is not added, and nothing else changes (parent, SOURCE_DATE_EPOCH). Returns
    the new lock and what changed."""
    chosen = {(d.name, d.architecture): d for d in lock.packages}
    names: dict[str, list[tuple[str, str]]] = {}
    for key in chosen:
        names.setdefault(key[0], []).append(key)
    for deb in newer:
        held = names.get(deb.name, [])
        key = (deb.name, deb.architecture) if len(held) != 1 else held[0]
        if key in chosen:
            chosen[key] = replace(deb, auto=chosen[key].auto)  # a newer version, same mark
    new = Lock(lock.parent, lock.source_date_epoch, tuple(sorted(chosen.values())))
    return new, diff(lock.packages, new.packages)
