"""Freshness, decided: which of an image's packages have a newer version in the suites its
own apt sources name, which of those come from a security suite, since when kiln knows
of each, and the ``max_security_age`` gate.

- An image's sources are its own ``/etc/apt`` files (kiln.apt.image), read once per image
  digest (an image never changes) and kept under ``cache/apt-indexes/images/``; an image
  that names none falls back to the host's sources. A line left out for want of its
  keyring is kept there too, and said (:func:`notes`), with whether the host's sources
  stood in for the image's.
- The newest version any of those suites offers wins, for the package's architecture or
  ``all``, compared in Debian order (kiln.apt.versions); it is an update when it is newer
  than the installed one.
- Packages indexes carry no dates, so kiln records when it first sees each newer version
  in a suite (``update_sightings``: one row per package, architecture, version and suite,
  never changed); ``max_security_age`` measures from there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.apt import indexes
from kiln.apt.image import Dropped, Layers, image_sources
from kiln.apt.indexes import Available, View
from kiln.apt.sources import host_sources, keep_inline_key
from kiln.apt.versions import compare
from kiln.atomic import write_atomic
from kiln.catalog import outdated
from kiln.catalog.lookup import ImageRow, Lookup, iso, moment
from kiln.durations import seconds
from kiln.errors import BadInput
from kiln.home import Home
from kiln.store.layout import Layout

if TYPE_CHECKING:
    from kiln.catalog.session import Session

SOURCES_FORMAT = 2
Key = tuple[str, str, str, str]  # package, architecture, version, suite


def key_of(available: Available) -> Key:
    return (available.package, available.architecture, available.version, available.suite)


@dataclass(frozen=True)
class Update:
    """A package of an image with a newer version in its sources.

    ``available`` is the newest version any suite offers; ``fix`` the newest a security
    suite offers when that too is newer than the installed one (the same as
    ``available`` unless a later point release carries an even newer version): the
    update is a security update exactly when there is a ``fix``. ``first_seen`` and
    ``fix_seen``: when kiln first saw each."""

    package: str
    architecture: str  # as installed
    installed: str
    available: Available
    first_seen: datetime | None = None
    fix: Available | None = None
    fix_seen: datetime | None = None

    @property
    def security(self) -> bool:
        return self.fix is not None

    @property
    def key(self) -> Key:
        return key_of(self.available)

    @property
    def keys(self) -> list[Key]:
        return [self.key] + ([key_of(self.fix)] if self.fix and self.fix != self.available else [])

    @property
    def unseen(self) -> bool:
        return self.first_seen is None or (self.fix is not None and self.fix_seen is None)

    def to_json(self) -> dict[str, Any]:
        fix = self.fix
        return {
            "package": self.package,
            "architecture": self.architecture,
            "installed": self.installed,
            "available": self.available.version,
            "suite": self.available.suite,
            "security": fix is not None,
            "security_version": fix.version if fix is not None else None,
            "security_suite": fix.suite if fix is not None else None,
            "first_seen": _iso(self.first_seen) if self.first_seen else None,
        }


def updates(
    installed: Iterable[tuple[str, str, str]],
    view: View,
    seen: dict[Key, datetime] | None = None,
) -> list[Update]:
    """(name, architecture, version) installed -> the updates ``view`` offers, by name;
    with ``seen`` (kiln's first sightings), each with its ``first_seen``."""
    out = []
    best_of = view.best
    seen = seen or {}
    for name, architecture, version in installed:
        best = best_of(name, architecture)
        if best is None or compare(best.version, version) <= 0:
            continue
        fix = best if best.security else best_of(name, architecture, True)
        if fix is not None and compare(fix.version, version) <= 0:
            fix = None
        fixed = seen.get(key_of(fix)) if fix is not None else None
        out.append(Update(name, architecture, version, best, seen.get(key_of(best)), fix, fixed))
    return sorted(out, key=lambda u: (u.package, u.architecture))


def counts(installed: Iterable[tuple[str, str, str]], view: View) -> tuple[int, int]:
    """(security, other): how many of ``installed`` have an update, as :func:`updates`
    finds them, answered once per package, architecture and version for the view."""
    memo = view.pending
    security = other = 0
    for row in installed:
        code = memo.get(row)
        if code is None:
            best = view.best(row[0], row[1])
            code = 0
            if best is not None and compare(best.version, row[2]) > 0:
                fix = best if best.security else view.best(row[0], row[1], True)
                code = 2 if fix is not None and compare(fix.version, row[2]) > 0 else 1
            memo[row] = code
        if code == 2:
            security += 1
        elif code == 1:
            other += 1
    return security, other


# --- what gc may remove ---


def unused(home: Home, digests: Collection[str]) -> list[Path]:
    """The entries of this cache no image in ``digests`` needs: the sources kept for images
    no longer there, and the index folders and keyrings that no kept image's sources
    (nor the host's, for images that name none) use."""
    root = cache_root(home)
    out: list[Path] = []
    wanted = [host_lines(home)]
    for path in sorted((root / "images").glob("*.json")):
        digest = f"sha256:{path.stem}"
        if digest not in digests:
            out.append(path)
            continue
        found = cached_lines(home, digest)
        if found is not None:
            wanted.append(found[0])
    folders = {indexes.key(lines) for lines in wanted if lines}
    keyrings = {
        word.partition("signed-by=")[2].rstrip("]")
        for lines in wanted
        for line in lines
        for word in line.split()
        if "signed-by=" in word
    }
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_dir() and len(path.name) == 64 and path.name not in folders:
            out.append(path)
    out += [p for p in sorted((root / "keyrings").glob("*")) if str(p) not in keyrings]
    return out


# --- an image's sources ---


def cache_root(home: Home) -> Path:
    return indexes.cache_root(home.root)


def _sources_file(home: Home, digest: str) -> Path:
    return cache_root(home) / "images" / f"{digest.partition(':')[2]}.json"


def _keyrings(home: Home) -> Path:
    return cache_root(home) / "keyrings"


@functools.cache
def _host_lines(keyrings: Path) -> tuple[str, ...]:
    kept = [keep_inline_key(source, keyrings) for source in host_sources()]
    return tuple(sorted({source.line() for source in kept if source is not None}))


def host_lines(home: Home) -> list[str]:
    """The host's sources lines: what an image that names none is checked against (an
    inline key kept as a keyring file of the cache)."""
    return list(_host_lines(_keyrings(home)))


def _cached(home: Home, digest: str) -> dict[str, Any] | None:
    try:
        data = json.loads(_sources_file(home, digest).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SOURCES_FORMAT else None


def cached_lines(home: Home, digest: str) -> tuple[list[str], bool] | None:
    """The image's sources lines as kept (``own`` False: the host's), or None."""
    data = _cached(home, digest)
    if data is None:
        return None
    try:
        own = bool(data["own"])
        lines = [str(line) for line in data["lines"]]
    except (KeyError, TypeError):
        return None
    return (lines, True) if own else (host_lines(home), False)


def notes(home: Home, digest: str) -> list[dict[str, Any]]:
    """What reading the image's sources left out, one note per line dropped for want of
    its keyring: ``file``, ``keyring``, ``source`` (the line), ``host_sources`` (True: the
    image was then checked against the host's sources) and ``message``."""
    data = _cached(home, digest) or {}
    own = bool(data.get("own"))
    out = []
    for item in data.get("dropped") or []:
        try:
            dropped = Dropped(str(item["file"]), str(item["keyring"]), str(item["source"]))
        except (KeyError, TypeError):
            continue
        what = (
            "an inline Signed-By block that is not one armoured public key"
            if dropped.keyring == "inline"
            else f"keyring {dropped.keyring}, which the image does not hold"
        )
        instead = (
            "; the image names no other sources, so it was checked against the host's "
            "sources instead"
            if not own
            else ""
        )
        out.append(
            {
                **dropped.to_json(),
                "host_sources": not own,
                "message": f"{dropped.file}: {dropped.source} names {what}: the line was "
                f"left out{instead}",
            }
        )
    return out


def image_lines(home: Home, layout: Layout, image: ImageRow) -> tuple[list[str], bool]:
    """The image's own sources lines (True), else the host's (False), read from its layers
    the first time and kept by digest."""
    found = cached_lines(home, image.digest)
    if found is not None:
        return found
    from kiln.store import stored

    loaded = stored.load(home, layout, image.ref, image.digest)
    try:
        sources, files, dropped = image_sources(Layers(loaded.layer_dirs), _keyrings(home))
    except BadInput as exc:  # a symlink loop, a sources file too big: the image's doing
        raise BadInput(
            f"{image.ref}: its apt sources cannot be read: {exc.message}",
            hint=f"kiln outdated the other images by name; fix the sources in "
            f"{image.name}'s recipe",
        ) from None
    lines = sorted({source.line() for source in sources})
    write_atomic(
        _sources_file(home, image.digest),
        json.dumps(
            {
                "format": SOURCES_FORMAT,
                "own": bool(lines),
                "lines": lines,
                "files": files,
                "dropped": [d.to_json() for d in dropped],
            }
        ).encode(),
    )
    return (lines, True) if lines else (host_lines(home), False)


# --- first sightings ---


def sightings(lookup: Lookup) -> dict[Key, datetime]:
    """Every first sighting kiln recorded (one time object per distinct time)."""
    times: dict[Any, datetime] = {}
    out = {}
    for p, a, v, s, at in outdated.sightings(lookup):
        when = times.get(at)
        if when is None:
            when = times[at] = moment(at)
        out[(p, a, v, s)] = when
    return out


@functools.lru_cache(maxsize=1024)
def _iso(moment_: datetime) -> str | None:
    return iso(moment_)


def with_first_seen(found: Sequence[Update], seen: dict[Key, datetime]) -> list[Update]:
    return [
        replace(
            u,
            first_seen=seen.get(u.key),
            fix_seen=seen.get(key_of(u.fix)) if u.fix is not None else None,
        )
        for u in found
    ]


def record(session: Session, found: Iterable[Update], now: datetime) -> int:
    """Insert the sightings not recorded yet, in the caller's write transaction; a rival
    inserting the same row at once is no error (its time stands). Returns rows offered."""
    from kiln.catalog.freshness import record_sightings

    rows = {
        key: {
            "package": key[0],
            "architecture": key[1],
            "version": key[2],
            "suite": key[3],
            "security": u.fix is not None and key == key_of(u.fix),
            "first_seen": now,
        }
        for u in found
        for key in u.keys
    }
    if not rows:
        return 0
    record_sightings(session, list(rows.values()))
    return len(rows)


# --- the gate ---


def _ago(seconds_: float) -> str:
    from kiln.lifecycle.gates import span

    return span(seconds_)


def security_gate(
    lookup: Lookup,
    home: Home,
    layout: Layout,
    image: ImageRow,
    max_age: str | None,
    now: datetime,
) -> tuple[bool, str] | None:
    """``max_security_age``: no security update for the image that kiln first saw longer
    ago than ``max_age``; None when the channel does not ask. Cached indexes only: a
    promotion never fetches."""
    if max_age is None:
        return None
    limit = seconds(max_age)
    lines, _own = image_lines(home, layout, image)
    view = indexes.cached(indexes.cache_root(home.root), lines)
    again = f"kiln outdated {image.ref} --fetch"
    if view is None:
        return False, f"no Packages index of {image.ref}'s apt sources is cached: {again}"
    if (now - view.checked).total_seconds() > limit:
        return False, (
            f"the cached Packages indexes of {image.ref}'s sources are from {iso(view.checked)},"
            f" older than max_security_age {max_age}: {again}"
        )
    found = updates(_installed(lookup, image), view, sightings(lookup))
    pending = [u for u in found if u.security]
    late = [u for u in pending if u.fix_seen and (now - u.fix_seen).total_seconds() > limit]
    if late:
        late.sort(key=lambda u: u.fix_seen or now)
        u = late[0]
        assert u.fix is not None and u.fix_seen is not None
        more = f" (and {len(late) - 1} more)" if len(late) > 1 else ""
        return False, (
            f"{image.ref} has {u.package} {u.installed}, and {u.fix.version} from "
            f"{u.fix.suite} (a security update) was first seen {iso(u.fix_seen)}, "
            f"{_ago((now - u.fix_seen).total_seconds())} ago, over max_security_age "
            f"{max_age}{more}: kiln refresh {image.name}"
        )
    what = f"{len(pending)} newer" if pending else "none"
    return True, (
        f"no security update pending longer than {max_age} ({what}; indexes of {iso(view.checked)})"
    )


def _installed(lookup: Lookup, image: ImageRow) -> list[tuple[str, str, str]]:
    return [(p.name, p.architecture, p.version) for p in lookup.packages(image.id)]
