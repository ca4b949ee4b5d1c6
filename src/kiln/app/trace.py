"""Where images run and what happened to them: `kiln where` (machines, channels, the
environment matrix, drift per machine, the stores and registries holding each image's
bytes) and `kiln history`; and what `kiln inspect` and
`kiln lineage` add about an image's life (channels, revocation, the parent as named).

Reads ask the catalog's plain-SQL lookup, so `kiln where` over a large catalog never loads
SQLAlchemy unless a scheduled revocation is due and its rows must be written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln import refs
from kiln.app import stores
from kiln.app.lifecycle import known, now_utc, settle_due
from kiln.app.workspace import Workspace
from kiln.catalog import holdings, versions
from kiln.catalog import trace as read
from kiln.catalog.lookup import Head, ImageRow, Lookup, RevocationRow, iso
from kiln.errors import KilnError
from kiln.lifecycle import proofs
from kiln.machines.folder import Folder, load
from kiln.machines.process import running


@dataclass
class _Estate:
    """What runs where, read once: channels, machines, revocations, signatures."""

    now: datetime
    heads: list[Head]
    machines: list[dict[str, Any]]
    images: dict[int, ImageRow]
    created: dict[int, datetime]
    revoked: dict[int, RevocationRow]
    signed: set[int]
    fresh: Any = None  # kiln.app.freshness.Summaries, when any image's sources are cached
    proofs: dict[int, dict[str, Any]] = field(default_factory=dict)  # the newest of each
    here: str = ""  # this store's id
    lookup: Lookup | None = None  # asked for the holdings of the images shown, once each
    held: dict[int, list[holdings.Holding]] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)

    def stores_json(self, image_id: int) -> list[dict[str, Any]]:
        """Where the image's bytes are: read with those of every image known so far."""
        if image_id not in self.asked and self.lookup is not None:
            wanted = {image_id, *self.images} - self.asked
            self.held.update(holdings.holders(self.lookup, sorted(wanted)))
            self.asked |= wanted
        return [h.to_json(self.here) for h in self.held.get(image_id, [])]

    def channels_of(self, image_id: int) -> list[str]:
        return sorted(
            h.assignment.channel
            for h in self.heads
            if h.current is not None and h.current.id == image_id
        )

    def machines_of(self, image_id: int) -> list[dict[str, Any]]:
        return [m for m in self.machines if m["image_id"] == image_id]

    def revoked_json(self, image_id: int) -> dict[str, Any] | None:
        found = self.revoked.get(image_id)
        return found.to_json() if found is not None else None

    def image_json(self, image_id: int) -> dict[str, Any]:
        image = self.images[image_id]
        created = self.created.get(image_id)
        return {
            "ref": image.ref,
            "name": image.name,
            "version": image.version,
            "digest": image.digest,
            "created": iso(created),
            "age_seconds": round((self.now - created).total_seconds()) if created else None,
            "signed": image_id in self.signed,
            "revoked": self.revoked_json(image_id),
            "channels": self.channels_of(image_id),
            "machines": [m["name"] for m in self.machines_of(image_id)],
            "freshness": self.fresh.of(image) if self.fresh is not None else None,
            "proof": self.proofs.get(image_id),
            "stores": self.stores_json(image_id),
        }


def _machine_state(folder: str) -> str:
    try:
        state = load(Folder(Path(folder)))
    except KilnError:  # a launch that did not finish, or a damaged state file
        return "missing"
    return "running" if running(state) else "stopped"


def _drift(workspace: Workspace, machine: dict[str, Any]) -> int | None:
    """How many paths the machine changed against its image (kiln drift's fast check);
    None when it cannot be told (no folder, a launch that did not finish)."""
    if machine["state"] not in ("running", "stopped"):
        return None
    from kiln.machines import drift

    try:
        return drift.scan(workspace.home, machine["name"]).total
    except (KilnError, OSError):
        return None


def _estate(workspace: Workspace, family: str | None = None, drift: bool = True) -> _Estate:
    lookup = workspace.lookup
    now = now_utc()
    heads = lookup.heads(family, at=now)
    settle_due(workspace, heads)
    machines = []
    for name, image_id, image_ref, digest, folder, created, stopped, throwaway in read.machines(
        lookup
    ):
        if family is not None and image_ref.partition(":")[0] != family:
            continue
        machines.append(
            {
                "name": name,
                "image_id": image_id,
                "image": image_ref,
                "digest": digest,
                "state": _machine_state(folder),
                "created": iso(created),
                "stopped": iso(stopped) if stopped is not None else None,
                "throwaway": bool(throwaway),
            }
        )
        if drift:
            machines[-1]["drift"] = _drift(workspace, machines[-1])
    ids = [h.current.id for h in heads if h.current is not None]
    ids += [m["image_id"] for m in machines]
    images = lookup.by_ids(ids)
    created = read.created(lookup, list(images))
    revoked = lookup.revoked_images(now)
    signed = read.signed(lookup)
    estate = _Estate(now, heads, machines, images, created, revoked, signed)
    estate.fresh = _freshness(workspace)
    estate.proofs = proofs.latest(lookup)
    estate.here, estate.lookup = stores.here(workspace), lookup
    for machine in machines:
        machine["channels"] = estate.channels_of(machine["image_id"])
        machine["revoked"] = estate.revoked_json(machine["image_id"])
    return estate


def _freshness(workspace: Workspace) -> Any:
    """Pending updates per image from cached indexes (kiln.app.freshness), loaded only
    when kiln outdated has read some image's sources (cache/apt-indexes/images/)."""
    if not (workspace.home.root / "cache" / "apt-indexes" / "images").is_dir():
        return None
    from kiln.app.freshness import Summaries

    return Summaries(workspace)


def _public(machine: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in machine.items() if key != "image_id"}


def _latest(lookup: Lookup, estate: _Estate, names: list[str]) -> dict[str, int]:
    """The newest version of each name that is not revoked, by image id (one query)."""
    return versions.newest_usable(lookup, set(names), estate.revoked)


def where(
    workspace: Workspace, target: str | None = None, revoked_only: bool = False
) -> dict[str, Any]:
    """Which machines run which version, and which channels point at it.

    No target: the environment matrix (every name x every channel, plus the newest
    version) and every machine. A NAME: each of its versions that runs somewhere or is
    in a channel. A REF: that image. ``revoked_only``: every revocation not restored
    (of the NAME or REF, when one is given) and the machines running revoked images (what
    the command's exit code reports)."""
    lookup = workspace.lookup
    family = None
    image: ImageRow | None = None
    if target is not None:
        parsed = refs.parse(target)
        if ":" in target or "@" in target:
            image = lookup.image(parsed, usable=False)
        else:
            known(lookup, parsed.name)
        family = parsed.name
    estate = _estate(workspace, family, drift=not revoked_only)
    if image is not None:
        estate.images.setdefault(image.id, image)
        estate.created.update(read.created(lookup, [image.id]))
        estate.machines = [m for m in estate.machines if m["image_id"] == image.id]
    if revoked_only:
        from kiln.lifecycle import revocation

        machines = [
            m for m in estate.machines if m["revoked"] is not None and m["state"] == "running"
        ]
        listed = revocation.standing(lookup, estate.now, family)
        if image is not None:
            listed = [s for s in listed if image.ref in (s.revocation.ref, *s.descendants)]
        return {
            "revoked": [found.to_json() for found in listed],
            "machines": [_public(m) for m in machines],
        }
    if family is not None:
        ids = {image.id} if image is not None else set(estate.images)
        latest = _latest(lookup, estate, [family]).get(family)
        left: dict[int, list[str]] = defaultdict(list)  # image -> channels emptied of it
        for head in estate.heads:
            gone = _left(head)
            if head.current is None and gone is not None:
                left[gone].append(head.assignment.channel)
        if image is None:
            ids |= set(left)
            if latest is not None:
                ids.add(latest)
            else:  # every version revoked: the family as it is, each with its reason
                ids |= set(read.family(lookup, family))
            more = [i for i in ids if i not in estate.images]
            estate.images.update(lookup.by_ids(more))
            estate.created.update(read.created(lookup, more))
        versions = []
        for image_id in sorted(ids, key=lambda i: -estate.images[i].version):
            data = estate.image_json(image_id)
            data["latest"] = image_id == latest
            data["left"] = sorted(left.get(image_id, []))
            data["machines"] = [_public(m) for m in estate.machines_of(image_id)]
            versions.append(data)
        return {"name": family, "versions": versions}
    return _matrix(workspace, estate)


def _left(head: Head) -> int | None:
    """The image an empty channel held before a revocation emptied it (None: it holds one,
    or nothing is known of what it held)."""
    if head.left is not None and head.image is not None:
        return head.image.id  # a scheduled revocation came; its row is written this read
    row = head.assignment
    if head.image is None and row.action == "revoke":
        return row.previous_id
    return None


def _empty(head: Head, estate: _Estate, gone: Any) -> dict[str, Any] | None:
    """Why a channel holds nothing: what it held and what took it (a revocation, with
    its reason; or kiln gc, when the version went since)."""
    image_id = _left(head)
    if image_id is not None and image_id in estate.images:
        revoked = estate.revoked.get(image_id)
        return {
            "left": estate.images[image_id].ref,
            "revoked": revoked.to_json() if revoked is not None else None,
            "removed": False,
        }
    was = gone.previous.get(head.assignment.id) or gone.image.get(head.assignment.id)
    if was is not None:
        return {"left": was.ref, "revoked": None, "removed": True}
    return None


def _pipeline(workspace: Workspace, used: set[str]) -> list[str]:
    """The channels as columns: those the policy file defines, in pipeline order (each
    after the one its ``after`` names, else in the file's order), then any others in use,
    sorted. Without a policy file: the channels in use, sorted."""
    from kiln.lifecycle.policyfile import locate

    path = locate(workspace.home, None)
    if path is None:
        return sorted(used)
    from kiln.lifecycle import policy

    defined = policy.load(path).model.channels.defined
    order: list[str] = []
    while len(order) < len(defined):
        ready = [
            name
            for name, gates in defined.items()
            if name not in order and (gates.after is None or gates.after in order)
        ]
        if not ready:  # a cycle, which loading refuses: keep the file's order
            order += [name for name in defined if name not in order]
            break
        order.append(ready[0])
    return order + sorted(used - set(order))


def _matrix(workspace: Workspace, estate: _Estate) -> dict[str, Any]:
    from kiln.catalog import removed

    lookup = workspace.lookup
    names = read.names(lookup)
    names = sorted(set(names) | {h.assignment.name for h in estate.heads})
    channel_names = _pipeline(workspace, {h.assignment.channel for h in estate.heads})
    latest = _latest(lookup, estate, names)
    baked = set(read.names(lookup, finished=True))
    emptied = [h for h in estate.heads if h.current is None]
    left = [i for i in (_left(h) for h in emptied) if i is not None]
    missing = [i for i in [*latest.values(), *left] if i not in estate.images]
    estate.images.update(lookup.by_ids(missing))
    estate.created.update(read.created(lookup, missing))
    gone = removed.gone(lookup, {h.assignment.name for h in emptied})
    by_cell = {(h.assignment.name, h.assignment.channel): h for h in estate.heads}
    rows = []
    for name in names:
        cells: dict[str, Any] = {}
        empty: dict[str, Any] = {}
        for channel in channel_names:
            head = by_cell.get((name, channel))
            current = head.current if head is not None else None
            if head is None or current is None:
                cells[channel] = None
                why = _empty(head, estate, gone) if head is not None else None
                if why is not None:
                    empty[channel] = why
                continue
            cells[channel] = {**estate.image_json(current.id), "since": iso(head.assignment.at)}
        newest = latest.get(name)
        rows.append(
            {
                "name": name,
                "latest": estate.image_json(newest) if newest is not None else None,
                "all_revoked": newest is None and name in baked,
                "channels": cells,
                "empty": empty,
            }
        )
    return {
        "channels": channel_names,
        "images": rows,
        "machines": [_public(m) for m in estate.machines],
    }


# history


def history(workspace: Workspace, name: str) -> list[dict[str, Any]]:
    """Every event of the image family ``name``, oldest first."""
    lookup = workspace.lookup
    settle_due(workspace, lookup.heads(name))
    rows = read.events(lookup, name)
    if not rows:
        known(lookup, name)
    return [
        {
            "id": rid,
            "at": iso(at),
            "kind": kind,
            "name": family,
            "version": version,
            "ref": f"{family}:{version}" if version is not None else None,
            "digest": digest or None,
            "machine": machine or None,
            "actor": actor,
            "detail": json.loads(detail or "{}"),
        }
        for rid, at, kind, family, version, digest, machine, actor, detail in rows
    ]


# what inspect and lineage add


def about(workspace: Workspace, image_id: int, name: str, digest: str) -> dict[str, Any]:
    """An image's standing, for inspect and lineage: revoked (and by what), the channels
    that point at it, and its parent as its recipe named it when it was baked (a channel,
    ``base:prod``, stays on record beside the version it meant)."""
    lookup = workspace.lookup
    now = now_utc()
    found = lookup.revocations(image_id)
    revocation = next((r for r in found if r.due(now)), None)
    scheduled = next((r for r in found if not r.due(now)), None)
    heads = lookup.heads(name, at=now)
    detail = read.baked_detail(lookup, name, digest)
    return {
        "revoked": revocation.to_json() if revocation is not None else None,
        "revocation_scheduled": scheduled.to_json() if scheduled and not revocation else None,
        "channels": sorted(
            h.assignment.channel
            for h in heads
            if h.current is not None and h.current.id == image_id
        ),
        "parent_named": detail.get("parent_named"),
    }
