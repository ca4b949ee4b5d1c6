"""`kiln outdated`: the packages of each image that have a newer version in the suites the
image's own apt sources name, security updates marked; and the freshness `kiln where`
shows per image (cached indexes only).

Which images: every channel head and each name's newest usable version, or those the
targets name (a NAME: its channel heads and newest version; a REF: that image). Their
sources come from kiln.lifecycle.freshness (read from the image once per digest), their
indexes from kiln.apt.indexes (fetched when older than ``[freshness] index_max_age``),
their packages from the catalog. Every update seen is recorded as a first sighting, in
one write transaction and only when there is one not recorded yet (a warm run with
nothing new never loads SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln import refs
from kiln.app.workspace import Workspace
from kiln.apt import indexes
from kiln.apt.indexes import View
from kiln.catalog import outdated as installed_packages
from kiln.catalog import versions
from kiln.catalog.lookup import ImageRow, Lookup, iso
from kiln.lifecycle import freshness
from kiln.lifecycle.freshness import Update


@dataclass
class ImageUpdates:
    """One image's pending updates, from the indexes of its own sources.

    ``updates``: each a kiln.lifecycle.freshness.Update, whose ``available``
    (kiln.apt.indexes.Available) holds what a lock needs to move to that version and
    fetch its .deb: ``version``, ``architecture``, ``suite``, ``security``, ``filename``
    (below ``uri``), ``sha256``, ``size``, ``uri`` and ``url``. ``view`` is the index set
    they came from (``view.folder``, ``view.lines``, ``view.checked``), or None when no
    index of the image's sources is cached and none was fetched (``offline``).
    ``own_sources``: False when the image names no apt sources and the host's were used.
    ``notes``: the image's sources lines left out for want of their keyring
    (kiln.lifecycle.freshness.notes).
    """

    image: ImageRow
    channels: list[str]
    lines: list[str]
    own_sources: bool
    view: View | None
    updates: list[Update] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def security(self) -> list[Update]:
        return [u for u in self.updates if u.security]

    def to_json(self) -> dict[str, Any]:
        image = self.image
        security = len(self.security)
        return {
            "ref": image.ref,
            "name": image.name,
            "version": image.version,
            "digest": image.digest,
            "channels": self.channels,
            "sources": {
                "own": self.own_sources,
                "lines": self.lines,
                "checked": iso(self.view.checked) if self.view is not None else None,
            },
            "updates": [u.to_json() for u in self.updates],
            "notes": self.notes,
            "counts": {
                "updates": len(self.updates),
                "security": security,
                "other": len(self.updates) - security,
            },
        }


def _now() -> datetime:
    return datetime.now(UTC)


def index_max_age(workspace: Workspace, policy_file: Path | None = None) -> int:
    """The policy's ``[freshness] index_max_age`` in seconds (the models load only when
    there is a policy file)."""
    from kiln.lifecycle.policyfile import locate

    if locate(workspace.home, policy_file) is None:
        return 3600
    from kiln.lifecycle import policy

    return policy.find(workspace.home, policy_file).freshness.index_max_age_seconds


def _channels(lookup: Lookup, now: datetime) -> tuple[dict[int, list[str]], list[int]]:
    by_image: dict[int, list[str]] = {}
    for head in lookup.heads(at=now):
        if head.current is not None:
            by_image.setdefault(head.current.id, []).append(head.assignment.channel)
    return by_image, list(by_image)


def _newest(lookup: Lookup, names: set[str] | None, now: datetime) -> list[int]:
    return list(versions.newest_usable(lookup, names, lookup.revoked_images(now)).values())


def targets(workspace: Workspace, given: Sequence[str], now: datetime) -> list[ImageRow]:
    """The images ``kiln outdated`` looks at, each once, by name and version."""
    from kiln.app.resolve import image as resolve

    lookup = workspace.lookup
    _by_image, heads = _channels(lookup, now)
    ids: list[int] = []
    extra: list[ImageRow] = []
    if not given:
        ids = heads + _newest(lookup, None, now)
    else:
        names: set[str] = set()
        for target in given:
            parsed = refs.parse(target)
            if parsed.newest:
                resolve(workspace, parsed, usable=False)  # NotFound for an unknown name
                names.add(parsed.name)
            else:
                extra.append(resolve(workspace, parsed, usable=False))
        found = lookup.by_ids(heads)
        ids = [i for i in heads if found[i].name in names] + _newest(lookup, names, now)
    rows = {**lookup.by_ids(ids), **{row.id: row for row in extra}}
    return sorted(rows.values(), key=lambda r: (r.name, r.version))


def _packages(lookup: Lookup, ids: list[int]) -> dict[int, list[tuple[str, str, str]]]:
    return installed_packages.package_versions(lookup, ids)


def _views(
    workspace: Workspace,
    lines: list[list[str]],
    refresh: bool,
    offline: bool,
    max_age: int,
    now: datetime,
) -> dict[tuple[str, ...], View | None]:
    root = freshness.cache_root(workspace.home)
    out: dict[tuple[str, ...], View | None] = {}
    for these in lines:
        key = tuple(sorted(set(these)))
        if key in out:
            continue
        out[key] = indexes.view(root, key, max_age, now, refresh, offline) if key else None
    return out


def image_updates(
    workspace: Workspace,
    images: Sequence[ImageRow],
    refresh: bool = False,
    offline: bool = False,
    policy_file: Path | None = None,
    record: bool = True,
) -> list[ImageUpdates]:
    """For each image, its updates (with where each available version's .deb is), from
    the indexes of its own apt sources: fetched when older than the policy's
    ``index_max_age`` or with ``refresh``, never with ``offline``. ``record``: new
    updates are written to ``update_sightings`` (first seen: when their index was
    fetched), and every update carries its ``first_seen``."""
    now = _now()
    lookup = workspace.lookup
    channels, _heads = _channels(lookup, now)
    max_age = index_max_age(workspace, policy_file)
    found = [freshness.image_lines(workspace.home, workspace.layout, row) for row in images]
    views = _views(workspace, [lines for lines, _own in found], refresh, offline, max_age, now)
    packages = _packages(lookup, [row.id for row in images])
    seen = freshness.sightings(lookup)
    out = []
    for row, (lines, own) in zip(images, found, strict=True):
        view = views.get(tuple(sorted(set(lines))))
        pending = freshness.updates(packages[row.id], view, seen) if view is not None else []
        notes = freshness.notes(workspace.home, row.digest)
        out.append(
            ImageUpdates(row, sorted(channels.get(row.id, [])), lines, own, view, pending, notes)
        )
    if record and any(u.unseen for item in out for u in item.updates):
        by_view: dict[datetime, list[Update]] = {}
        for item in out:
            if item.view is not None:
                fresh = [u for u in item.updates if u.unseen]
                by_view.setdefault(item.view.checked, []).extend(fresh)
        with workspace.catalog.session() as session:
            for checked, updates in sorted(by_view.items()):
                freshness.record(session, updates, checked)
        seen = freshness.sightings(lookup)
        for item in out:
            item.updates = freshness.with_first_seen(item.updates, seen)
    return out


def outdated(
    workspace: Workspace,
    given: Sequence[str] = (),
    refresh: bool = False,
    offline: bool = False,
    policy_file: Path | None = None,
) -> dict[str, Any]:
    """kiln outdated: ``{"images": [...], "outdated": N}``, N the images with an update."""
    images = targets(workspace, given, _now())
    found = image_updates(workspace, images, refresh, offline, policy_file)
    return {
        "images": [item.to_json() for item in found],
        "outdated": sum(1 for item in found if item.updates),
    }


# kiln where's column


class Summaries:
    """Pending updates per image for kiln where, from cached sources and indexes only:
    ``{"security", "other", "checked"}``, or None when nothing is cached for the image."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.root = freshness.cache_root(workspace.home)
        self.views: dict[tuple[str, ...], View | None] = {}
        self.done: dict[int, dict[str, Any] | None] = {}

    def of(self, image: ImageRow) -> dict[str, Any] | None:
        if image.id in self.done:
            return self.done[image.id]
        self.done[image.id] = summary = self._summary(image)
        return summary

    def _summary(self, image: ImageRow) -> dict[str, Any] | None:
        found = freshness.cached_lines(self.workspace.home, image.digest)
        if found is None:
            return None
        key = tuple(sorted(set(found[0])))
        if key not in self.views:
            self.views[key] = indexes.cached(self.root, key)
        view = self.views[key]
        if view is None:
            return None
        installed = _packages(self.workspace.lookup, [image.id])[image.id]
        security, other = freshness.counts(installed, view)
        return {"security": security, "other": other, "checked": iso(view.checked)}
