"""`kiln gc`: what dead kiln processes left, bytes nothing refers to, and (with a
retention rule) the image versions no rule keeps, with the reasons for what stays.

The decision is kiln.lifecycle.retention's; here the catalog rows are read and removed in
one write transaction (each removed version leaves a ``removed`` event), then the store's
tags, referrers, blobs, unpacked layers and cached packages follow under the store lock.

A catalog many stores share (KILN_CATALOG_URL) says which store holds each version
(kiln.catalog.holdings). gc works for its own store: a version retention lets go loses
this store's copy and holding, and its catalog row (with a ``removed`` event) only when no
other store holds it (a registry's copy keeps no row: the notes say so); a version only
other stores hold stays, for their gc to decide. Of the rows of unfinished bakes, only
this store's go.
"""

from __future__ import annotations

import gc as cyclic
import shutil
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import locks
from kiln.app import network, stores
from kiln.app.workspace import Workspace
from kiln.catalog import holdings
from kiln.catalog import retention as rows
from kiln.catalog.lookup import Lookup
from kiln.catalog.revisions import PENDING
from kiln.errors import KilnError
from kiln.home import Home
from kiln.lifecycle import retention
from kiln.machines import leftovers
from kiln.machines.folder import each as machine_folders
from kiln.store import gc
from kiln.store.layout import image_ref

if TYPE_CHECKING:
    from kiln.catalog.session import Session


@dataclass
class Collected:
    """What ``kiln gc`` removed (with ``--dry-run``: would remove), and retention's decision:
    every version kept with its reasons, every version that goes."""

    report: gc.Report
    decision: retention.Decision
    policy: dict[str, str | None]
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # rule -> its flag or policy file

    def to_json(self) -> dict[str, Any]:
        return {
            **self.report.to_json(),
            "retention": {
                **self.decision.to_json(),
                "policy": self.policy,
                "sources": self.sources,
            },
            "notes": self.notes,
        }


def collect_garbage(
    workspace: Workspace,
    dry_run: bool = False,
    *,
    keep_last: int | None = None,
    keep_younger_than: str | None = None,
    keep_channel_history: str | None = None,
    policy_file: Path | None = None,
) -> Collected:
    """`kiln gc`: what dead kiln processes left, the image versions retention lets go, and
    bytes no image refers to.

    Build folders and ``tmp/`` entries nobody holds go first (with the processes still
    working in them and their mounts), and the cgroups and nspawn folders of this home's
    killed nspawns (kiln.machines.leftovers). Then, with the store lock held exclusively (no
    bake is between capture and tag): the versions retention lets go (their catalog rows
    and a "removed" event each in one transaction, then their tags), catalog rows of
    unfinished bakes with their tags, then blobs, referrer entries and unpacked layers
    that no image reaches, and package-cache files nothing needs. Without a retention
    rule (flags or the policy's ``[retention]``) no version is removed.
    """
    home, layout = workspace.home, workspace.layout
    rules, found, sources = retention.in_force(
        workspace.home, policy_file, keep_last, keep_younger_than, keep_channel_history
    )
    report = gc.Report(dry_run)
    report.items += gc.sweep_owned(home.builds, "build", dry_run)
    report.items += gc.sweep_owned(home.tmp, "tmp", dry_run)
    report.items += leftovers.sweep(home, dry_run)  # this home's cgroups, nspawn folders
    report.items += network.sweep(home, dry_run)  # namespaces, veths, bridges, forwards
    notes: list[str] = []
    with gc.store_sweep(home), _few_collections():
        index = layout.read_index()
        decision, dropped, snap = _retire(workspace, rules, found, index, dry_run, notes)
        report.items += [gc.Item("version", v.ref, 0) for v in decision.removed]
        report.items += dropped.items
        pending = _take_back_pending(workspace, dry_run, snap, notes)
        report.items += pending
        if dry_run:  # what the store would hold after the untagging a real run does
            refs = dropped.refs | {item.path for item in pending}
            report.items += gc.sweep_store(home, layout, dry_run, refs, index)
        else:
            report.items += gc.sweep_store(home, layout, dry_run)
        if rules.active:
            report.items += _sweep_debs(workspace, decision, snap.recipe_paths, dry_run, notes)
        report.items += _sweep_freshness(workspace, decision, dry_run, snap)
    gc.sweep_bake_locks(home, dry_run)  # tiny files, not worth a line in the report
    return Collected(report, decision, found, notes, sources)


@contextmanager
def _few_collections() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off: gc builds tens of thousands of small
    objects beside a large parsed index.json, and each full collection would walk them
    all again; at the end they are frozen, so no later collection walks them either.
    Nothing here makes cycles that need collecting before the command ends."""
    was = cyclic.isenabled()
    cyclic.disable()
    try:
        yield
    finally:
        if was:  # what was made meanwhile is set aside, not walked at the next collection
            cyclic.freeze()
            cyclic.enable()


@dataclass
class _Snapshot:
    """The catalog rows retention decides on, read in the transaction that removes."""

    versions: list[retention.Version]
    config_digests: dict[int, str]
    recipe_paths: dict[int, str]
    assignments: list[retention.Assigned]
    previous: dict[int, int]  # assignment row -> the image it replaced
    machines: list[tuple[int, str, int, bool, bool]]  # row, name, image, stopped, removed
    places: stores.Places = field(default_factory=lambda: stores.Places(""))


def _snapshot(lookup: Lookup) -> _Snapshot:
    images, assigned, machines = rows.snapshot(lookup)
    utc = retention.utc
    return _Snapshot(
        versions=[
            retention.Version(i, name, version, digest, parent, utc(created), status == PENDING)
            for i, name, version, digest, parent, created, status, _c, _r in images
        ],
        config_digests={row[0]: row[7] for row in images},
        recipe_paths={row[0]: row[8] for row in images},
        assignments=[
            retention.Assigned(i, name, channel, image_id, utc(at), action)
            for i, name, channel, image_id, at, _previous, action in assigned
        ],
        previous={row[0]: row[5] for row in assigned if row[5] is not None},
        machines=[
            (i, name, image_id, stopped is not None, removed is not None)
            for i, name, image_id, stopped, removed in machines
        ],
    )


@dataclass
class _Dropped:
    refs: set[str] = field(default_factory=set)  # image tags that go from index.json
    items: list[gc.Item] = field(default_factory=list)  # tags an interrupted gc left


def _retire(
    workspace: Workspace,
    rules: retention.Rules,
    found: dict[str, str | None],
    index: dict[str, Any],
    dry_run: bool,
    notes: list[str],
) -> tuple[retention.Decision, _Dropped, _Snapshot]:
    """Decide, then (unless ``dry_run``) remove the versions that go: catalog rows and
    events in one write transaction, which also holds the rows decided on steady (on
    SQLite it is the write lock); then their tags. A rival row that names a version
    after it was read (a promotion, a machine) fails the transaction: nothing is removed
    and gc says to run again."""
    layout = workspace.layout
    now = datetime.now(UTC)
    with _transaction(workspace, dry_run) as (session, lookup):
        snap = _snapshot(lookup)
        snap.places = stores.places(
            workspace, session, lookup, ((v.id, v.ref, v.digest) for v in snap.versions), index
        )
        uses = [
            retention.Use(name, image_id, stopped)
            for _row, name, image_id, stopped, removed in snap.machines
            if not removed
        ]
        pins = _folder_uses(workspace.home, snap, uses, notes)
        revoked = set(lookup.revoked_images(now))  # rollback steps over
        decision = retention.decide(
            snap.versions, snap.assignments, uses, rules, now, pins, revoked
        )
        mounted = _mounted(workspace, snap, decision)
        if mounted:
            pins.update(mounted)
            decision = retention.decide(
                snap.versions, snap.assignments, uses, rules, now, pins, revoked
            )
        decision, gone = stores.per_store(decision, snap.places, notes)
        if session is not None and decision.removed:
            _remove_rows(session, snap, decision, found, gone)
            released = [v.id for v in decision.removed if v.id not in gone]
            holdings.release_all(session, released, snap.places.here)
    dropped = _Dropped({v.ref for v in decision.removed})
    _interrupted(workspace, index, snap, dropped)
    if not dry_run and dropped.refs:
        layout.prune(lambda entry: image_ref(entry) in dropped.refs)
    return decision, dropped, snap


@contextmanager
def _transaction(workspace: Workspace, dry_run: bool) -> Iterator[tuple[Session | None, Lookup]]:
    """The transaction retention reads its rows in, and the lookup that asks inside it: a
    write transaction (its session) for a real run; for a dry run, a read transaction
    that needs no ORM on the embedded catalog (kiln.catalog.retention.reading)."""
    if dry_run:
        with rows.reading(workspace.home.catalog_url, lambda: workspace.catalog) as lookup:
            yield None, lookup
        return
    from kiln.catalog.session import reader

    with workspace.catalog.session() as session:
        yield session, reader(session)


def _folder_uses(
    home: Home, snap: _Snapshot, uses: list[retention.Use], notes: list[str]
) -> dict[int, list[str]]:
    """Machines known by their folder (``machines/<name>/machine.json``) and not (yet) by
    a catalog row: a launch writes its state before its row. A folder whose state cannot
    be read may be a launch that has not said its image yet: then no version goes."""
    out: dict[int, list[str]] = defaultdict(list)
    with_rows = {use.machine for use in uses}
    by_ref = {v.ref: v.id for v in snap.versions}
    by_digest: dict[str, list[int]] = defaultdict(list)
    for version in snap.versions:
        by_digest[version.digest].append(version.id)
    for folder, state in machine_folders(home):
        name = folder.name
        if name in with_rows:
            continue
        if state is None:
            notes.append(
                f"no image version was removed: machine {name} has no readable state "
                f"yet (a launch under way, or damaged: 'kiln rm {name}' clears it)"
            )
            for version in snap.versions:
                out[version.id].append(f"machine {name} may be launching from it")
            continue
        exact = by_ref.get(state.image)
        ids = [exact] if exact in by_digest.get(state.digest, []) else by_digest[state.digest]
        for image_id in ids:
            if image_id is not None:
                out[image_id].append(f"machine {name} runs it")
    return out


def _mounted(
    workspace: Workspace, snap: _Snapshot, decision: retention.Decision
) -> dict[int, list[str]]:
    """Versions about to go whose own layer a live overlay mounts: a bake that builds on
    it (before its pending row exists), or a machine. Read only when something is
    mounted: the configs of what would go are opened then, and only then."""
    if not decision.removed:
        return {}
    layers = gc.mounted_layers(workspace.home)
    if not layers:
        return {}
    out: dict[int, list[str]] = {}
    builds = str(workspace.home.builds.resolve()) + "/"
    for version in decision.removed:
        try:
            config = workspace.layout.read_json(snap.config_digests[version.id])
            top = str(config["rootfs"]["diff_ids"][-1]).split(":", 1)[1]
        except (KilnError, ValueError, KeyError, IndexError, TypeError):
            continue  # fsck's to report; without a readable config there is no layer to use
        point = layers.get(top)
        if point is None:
            continue
        if point.startswith(builds):
            bake = point[len(builds) :].split("/", 1)[0]
            out[version.id] = [f"a bake in progress builds on it ({bake})"]
        else:
            out[version.id] = [f"{point} mounts its layer"]
    return out


def _remove_rows(
    session: Session,
    snap: _Snapshot,
    decision: retention.Decision,
    found: dict[str, str | None],
    gone: set[int],
) -> None:
    """Every row of the versions ``gone`` (of those retention removes, the ones no other
    store holds), and a "removed" event for each.

    Channel history rows that name one keep their place with the image left out (the
    event history still says which it was); rows of removed machines made from one go
    with it (their machine_* events stay); packages, artefacts, test runs, signatures,
    revocations and rebuild proofs go.
    """
    from kiln.catalog import events

    if not gone:
        return
    history = [a.id for a in snap.assignments if a.image_id in gone]
    replaced = [row for row, image_id in snap.previous.items() if image_id in gone]
    machine_rows = [m for m in snap.machines if m[4] and m[2] in gone]
    machines = [m[0] for m in machine_rows]
    rows.remove_versions(session, sorted(gone), history, replaced, machines, snap.places.here)
    machines_of: dict[int, list[str]] = defaultdict(list)
    for _row, name, image_id, _stopped, _removed in machine_rows:
        machines_of[image_id].append(name)
    rows_of: dict[int, list[int]] = defaultdict(list)  # the channel rows that named it
    for row in snap.assignments:
        if row.image_id in gone:
            rows_of[row.image_id].append(row.id)
    replaced_of: dict[int, list[int]] = defaultdict(list)
    for row_id, image_id in snap.previous.items():
        if image_id in gone:
            replaced_of[image_id].append(row_id)
    for version in (v for v in decision.removed if v.id in gone):
        events.record(
            session,
            "removed",
            version.name,
            version.version,
            version.digest,
            by="gc",
            rules=decision.rules.to_json(),
            policy=found["path"],
            machines=sorted(set(machines_of[version.id])),
            held=decision.held_by(version.id),
            channel_rows=sorted(rows_of[version.id]),
            replaced_rows=sorted(replaced_of[version.id]),
        )


def _interrupted(
    workspace: Workspace, index: dict[str, Any], snap: _Snapshot, dropped: _Dropped
) -> None:
    """Tags a gc killed after its catalog transaction left behind: no catalog row names
    them, and a "removed" event says that very version (name, version, digest) went.
    A tag the catalog never knew is fsck's to report, not gc's to remove."""
    known = {v.ref for v in snap.versions}  # what goes now is among them
    tags = ((image_ref(entry), entry["digest"]) for entry in index["manifests"])
    dangling = {ref: digest for ref, digest in tags if ref is not None and ref not in known}
    if not dangling:
        return
    went = rows.removed_earlier(workspace.lookup, dangling.values())
    for ref, digest in sorted(dangling.items()):
        name, _, version = ref.rpartition(":")
        if version.isdigit() and (name, int(version), digest) in went:
            dropped.refs.add(ref)
            dropped.items.append(gc.Item("index", f"index.json: {ref} (removed earlier)", 0))


def _sweep_debs(
    workspace: Workspace,
    decision: retention.Decision,
    recipes: dict[int, str],
    dry_run: bool,
    notes: list[str],
) -> list[gc.Item]:
    """Package-cache files that no kept image holds (its packages rows) and no lock file
    of a kept image's recipe names; left alone while a bake runs."""
    home = workspace.home
    if not any(home.debs.glob("*.deb")):
        return []
    running = gc.bakes_running(home)
    if running:
        notes.append(f"the package cache was left as it is: a bake is running ({running[0]})")
        return []
    from kiln.recipe import lockfile

    kept = sorted(set(decision.kept) | {v.id for v in decision.versions.values() if v.pending})
    needed = rows.package_digests(workspace.lookup, kept)
    for recipe in sorted({recipes[image_id] for image_id in kept}):
        path = lockfile.lock_path(Path(recipe))
        if not path.is_file():
            continue
        try:
            needed |= {deb.sha256 for deb in lockfile.parse(path).packages if deb.sha256}
        except (KilnError, OSError) as exc:
            notes.append(
                f"the package cache was left as it is: {path} could not be read "
                f"({getattr(exc, 'message', exc)})"
            )
            return []
    return gc.sweep_debs(home, needed, dry_run)


def _sweep_freshness(
    workspace: Workspace, decision: retention.Decision, dry_run: bool, snap: _Snapshot
) -> list[gc.Item]:
    """kiln outdated's cache (kiln.lifecycle.freshness.unused): what no image left needs.
    An index folder being fetched into (its lock held) is left for the next gc. A dry run
    reads the images from the snapshot it decided on (every row, pending ones too); a
    real run asks the catalog again, after it took back the pending rows."""
    from kiln.lifecycle import freshness

    gone = {v.id for v in decision.removed}
    if dry_run:
        kept = {v.digest for v in snap.versions if v.id not in gone}
    else:
        images = rows.image_digests(workspace.lookup)
        kept = {digest for image_id, digest in images if image_id not in gone}
    out = []
    for path in freshness.unused(workspace.home, kept):
        size = gc.size_of(path)
        if path.is_dir():
            held = locks.hold(path / "lock", wait=False)
            if held is None:
                continue
            with held:
                if not dry_run:
                    shutil.rmtree(path)
        elif not dry_run:
            path.unlink(missing_ok=True)
        out.append(gc.Item("apt-index", str(path), size))
    return out


def _take_back_pending(
    workspace: Workspace, dry_run: bool, snap: _Snapshot, notes: list[str]
) -> list[gc.Item]:
    """Rows of this store's bakes that died between taking a version and finishing: with
    the sweep lock held, no live bake on this store is in that window. Another store's
    stay: its bakes may be live. A dry run lists those of the snapshot retention decided
    on, without a write transaction."""
    places = snap.places
    others = [v for v in snap.versions if v.pending and not places.mine(v.id)]
    if others:
        notes.append(
            f"{len(others)} unfinished bake{'s' if len(others) != 1 else ''} of other "
            f"stores left to their own gc (first: {others[0].ref})"
        )
    if dry_run:
        pending = sorted((v for v in snap.versions if v.pending), key=lambda v: v.id)
        return [gc.Item("image", v.ref, 0) for v in pending if places.mine(v.id)]
    layout, catalog = workspace.layout, workspace.catalog
    out = []
    with catalog.session() as session:
        mine = holdings.held_by(session, places.here)
        for image in catalog.pending(session):
            if image.id not in mine:
                continue
            out.append(gc.Item("image", image.ref, 0))
            layout.untag(image.ref, digest=image.digest)  # its referrers go in the sweep
            session.delete(image)
    return out
