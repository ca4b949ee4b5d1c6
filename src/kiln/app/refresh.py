"""`kiln refresh`: images with pending updates are rebaked from an updated lock, tested, and
promoted through their channel's gates; what is built on them follows by propagation.

    kiln outdated (each name's newest version) -> each update to the image that installed
    the package (base's libc6 is base's to update, not web's) -> bump those locks -> bake
    the topmost of them -> kiln test -> promote (--promote) -> kiln propagate to the rest

An update belongs to the image of the lineage whose own layer installed the package: the
root-most image holding that package at that version. Its recipe's lock moves those
packages to the versions the indexes offer (with ``--security-only``, only the updates
from a security suite), their .debs are fetched into the package cache from the image's
own sources, and the recipe is baked from that lock. A recipe without a lock is baked
without the cache (apt takes the newest of everything), which ``--security-only`` cannot
limit: it is refused, with the lock command as the way out.

A bumped lock that is the exact lock of an earlier version makes that version's bytes
the name's newest version again, under a new number (kiln.bake.again): ``base:4`` with the
bytes of ``base:2``, which is what the refresh then tests, promotes and propagates from.

Every lock is bumped first, then the images are baked root first: a child whose own
packages were bumped is rebaked once, by the propagation from its refreshed parent, with
its lock moved onto that parent (kiln.app.propagate). Nothing whose tests failed is
promoted or propagated from. Each refreshed image gets a ``refreshed`` event. A second
refresh finds nothing outdated and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import locks, refs
from kiln.app import freshness
from kiln.app.workspace import Workspace
from kiln.catalog import trace
from kiln.catalog.lookup import ImageRow, Lookup
from kiln.errors import BadInput, KilnError, from_os_error
from kiln.lifecycle.freshness import Update

Log = Callable[[str], None]

REFRESHED, UNCHANGED, FAILED, PROPAGATED = "refreshed", "unchanged", "failed", "propagated"


@dataclass(frozen=True)
class Options:
    security_only: bool = False
    promote: str | None = None  # the channel a refreshed image goes to, through its gates
    parallel: int = 1  # of the propagation to what is built on a refreshed image
    max_failures: int = 1
    fetch: bool = False  # fetch the Packages indexes now, whatever their age
    policy_file: Path | None = None


@dataclass
class Owner:
    """One image name to refresh: its newest version, the recipe that makes it, and the
    updates of packages its own layer installed (in it or in what is built on it)."""

    image: ImageRow
    depth: int  # 0: a base; 1: built on one ...
    updates: dict[tuple[str, str], Update] = field(default_factory=dict)
    lines: tuple[str, ...] = ()  # the apt sources the updates were found in
    state: str = "planned"
    lock: dict[str, Any] | None = None
    ref: str | None = None
    digest: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    propagation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.image.name,
            "recipe": self.image.recipe_path,
            "previous": self.image.ref,
            "state": self.state,
            "ref": self.ref,
            "digest": self.digest,
            "updates": [u.to_json() for u in self.sorted_updates],
            "lock": self.lock,
            "steps": self.steps,
            "error": self.error,
            "propagation": self.propagation,
        }

    @property
    def sorted_updates(self) -> list[Update]:
        return [self.updates[key] for key in sorted(self.updates)]


# which names


def _chain(lookup: Lookup, image: ImageRow, cache: dict[int, ImageRow]) -> list[ImageRow]:
    """``image`` and its ancestors, root first."""
    chain = [image]
    while chain[-1].parent_id is not None:
        parent_id = chain[-1].parent_id
        if parent_id not in cache:
            cache.update(lookup.by_ids([parent_id]))
        chain.append(cache[parent_id])
    return chain[::-1]


def owners(
    workspace: Workspace, images: Sequence[freshness.ImageUpdates], security_only: bool
) -> list[Owner]:
    """Each update to the name whose own layer installed its package, root-most first."""
    lookup = workspace.lookup
    cache: dict[int, ImageRow] = {}
    held: dict[int, set[tuple[str, str, str]]] = {}
    newest_of: dict[str, ImageRow] = {}
    out: dict[str, Owner] = {}
    for item in images:
        wanted = [u for u in item.updates if u.security or not security_only]
        if not wanted:
            continue
        chain = _chain(lookup, item.image, cache)
        for image in chain:
            if image.id not in held:
                held[image.id] = {
                    (p.name, p.architecture, p.version) for p in lookup.packages(image.id)
                }
        for update in wanted:
            installed = (update.package, update.architecture, update.installed)
            depth, image = next(  # the root-most image that holds it (else the image)
                ((d, i) for d, i in enumerate(chain) if installed in held[i.id]),
                (len(chain) - 1, chain[-1]),
            )
            if image.name not in newest_of:
                newest_of[image.name] = _newest(workspace, image.name)
            owner = out.setdefault(image.name, Owner(newest_of[image.name], depth))
            owner.lines = tuple(sorted(set(owner.lines) | set(item.lines)))
            key = (update.package, update.architecture)
            known = owner.updates.get(key)
            if known is None or _newer(update, known):
                owner.updates[key] = update
    return sorted(out.values(), key=lambda o: (o.depth, o.image.name))


def _newer(a: Update, b: Update) -> bool:
    from kiln.apt.versions import compare

    return compare(a.available.version, b.available.version) > 0


def _newest(workspace: Workspace, name: str) -> ImageRow:
    from kiln.app.resolve import image

    return image(workspace, refs.parse(name))


def _targets(workspace: Workspace, names: Sequence[str]) -> list[ImageRow]:
    """The newest usable version of each name (every name in the catalog by default)."""
    for name in names:
        if ":" in name or "@" in name:
            raise BadInput(
                f"kiln refresh takes image names, not {name!r}: it rebakes a name's newest version",
                hint=f"kiln refresh {refs.parse(name).name}",
            )
    wanted = set(names) or set(trace.names(workspace.lookup))
    found = []
    for name in sorted(wanted):
        try:
            found.append(_newest(workspace, name))
        except KilnError:  # unknown, or every version revoked: nothing to refresh from
            if names:
                raise
    return found


# one name


def _bump(workspace: Workspace, owner: Owner, options: Options, log: Log) -> bool:
    """Move the recipe's lock to the updates (their .debs fetched into the package cache);
    False when the recipe has no lock (it is baked without the cache instead)."""
    from kiln.bake.debcache import PackageCache
    from kiln.recipe import lockfile
    from kiln.recipe.lockfile import Deb

    recipe = Path(owner.image.recipe_path)
    if not recipe.is_file():
        raise KilnError(
            f"{owner.image.name}: its recipe {recipe} is gone",
            hint="bake the image's recipe where it is now, then run kiln refresh again",
        )
    path = lockfile.lock_path(recipe)
    if not path.is_file():
        if options.security_only:
            raise BadInput(
                f"{owner.image.name}: {recipe} has no lock, so its bake cannot take security "
                "updates alone",
                hint=f"lock it first (kiln lock {recipe}), or refresh without --security-only",
            )
        return False
    lock = lockfile.parse(path)
    newer = [
        Deb(u.package, u.available.architecture, u.available.version, u.available.sha256)
        for u in owner.sorted_updates
    ]
    new, changes = lockfile.bump(lock, newer)
    owner.lock = {"path": str(path), "changes": changes.to_json()}
    if changes.empty():
        return True
    PackageCache(workspace.home.debs).fetch(new.packages, list(owner.lines), workspace.home.tmp)
    lockfile.write(path, new, recipe.name)
    for line in changes.lines():
        log(f"{owner.image.name}: {path.name}: {line}")
    return True


def _bake(workspace: Workspace, owner: Owner, locked: bool, log: Log) -> None:
    from kiln.app.bake import Options as BakeOptions
    from kiln.app.bake import bake_path
    from kiln.bake.result import ONGOING

    def stage(line: str) -> None:
        if not line.endswith(ONGOING):
            log(line)

    recipe = Path(owner.image.recipe_path)
    results = bake_path(workspace, recipe, BakeOptions(no_cache=not locked), stage)
    owner.ref, owner.digest = results[-1].ref, results[-1].digest
    made = results[-1]
    owner.steps["bake"] = {"cached": made.cached, "seconds": round(made.seconds, 3)}
    if made.again_of:
        owner.steps["bake"]["again_of"] = made.again_of
    hit = " (cache hit)" if made.cached else ""
    log(f"{owner.image.name}: baked {owner.ref}{hit}" + (f" {made.note}" if made.note else ""))


def _test_and_promote(workspace: Workspace, owner: Owner, options: Options, log: Log) -> None:
    from kiln.app import qualify

    assert owner.ref is not None
    converge = qualify.converge_wanted(workspace, options.promote, options.policy_file)
    owner.steps["test"] = {}
    passed = qualify.test(workspace, owner.ref, converge, owner.steps["test"])
    log(f"{owner.image.name}: tested {owner.ref}: {passed} passed")
    if options.promote is not None:
        owner.steps["promote"] = {}
        qualify.promote(
            workspace, owner.ref, options.promote, options.policy_file, owner.steps["promote"]
        )
        log(f"{owner.image.name}: promoted {owner.ref} to {options.promote}")


def _record(workspace: Workspace, owner: Owner, options: Options) -> None:
    """A ``refreshed`` event: of the new version, or of the name when the refresh failed
    before its bake made one."""
    from kiln.catalog import events

    version = int(owner.ref.partition(":")[2]) if owner.ref else None
    with workspace.catalog.session() as session:
        events.record(
            session,
            "refreshed",
            owner.image.name,
            version,
            owner.digest or "",
            state=owner.state,
            error=owner.error,
            previous=owner.image.ref,
            updates=[u.to_json() for u in owner.sorted_updates],
            security_only=options.security_only,
            lock=owner.lock,
            promoted=options.promote if "promote" in owner.steps else None,
        )


def _propagate(workspace: Workspace, owner: Owner, options: Options, log: Log) -> set[str]:
    """Rebake what is built on the refreshed image; the names it reached."""
    from kiln.app import propagate

    assert owner.ref is not None
    run = propagate.propagate(
        workspace,
        owner.ref,
        propagate.Options(
            to=options.promote,
            parallel=options.parallel,
            max_failures=options.max_failures,
            policy_file=options.policy_file,
        ),
        log,
    )
    data = run.to_json()
    owner.propagation = data
    if isinstance(run, propagate.Run) and not run.ok:
        raise KilnError(
            f"{owner.ref} is refreshed, but its propagation did not finish: "
            + ", ".join(f"{t.name} {t.state}" for t in run.tasks if t.state != run.target),
            hint=f"see kiln history; kiln propagate {owner.ref}"
            + (f" --to {options.promote}" if options.promote else "")
            + " continues it",
        )
    return {item["name"] for item in data.get("items", [])}


def refresh(
    workspace: Workspace, names: Sequence[str], options: Options, log: Log
) -> dict[str, Any]:
    """kiln refresh: ``{"images": [...], "outdated": N, "ok": bool}``; nothing outdated,
    nothing done."""
    if options.promote is not None:
        from kiln.app import qualify
        from kiln.lifecycle.channels import check_name

        check_name(options.promote)
        # a channel the policy does not define is refused before anything is baked
        qualify.converge_wanted(workspace, options.promote, options.policy_file)
    lock = workspace.home.locks / "refresh.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = locks.hold(lock, wait=False)
    if held is None:
        raise KilnError(
            "another kiln refresh is running on this KILN_HOME",
            hint="wait for it: it refreshes the same images",
        )
    with held:
        images = _targets(workspace, names)
        found = freshness.image_updates(
            workspace, images, refresh=options.fetch, policy_file=options.policy_file
        )
        todo = owners(workspace, found, options.security_only)
        locked: dict[str, bool] = {}
        for owner in todo:  # every lock first: a child is rebaked once, on its new parent
            try:
                locked[owner.image.name] = _bump(workspace, owner, options, log)
            except KilnError as exc:
                owner.state, owner.error = FAILED, _message(exc)
        reached: set[str] = set()
        for owner in todo:
            name = owner.image.name
            if name in reached and owner.state != FAILED:
                owner.state = PROPAGATED  # its own events are the propagation's
                continue
            if owner.state != FAILED:
                try:
                    _bake(workspace, owner, locked[name], log)
                    _test_and_promote(workspace, owner, options, log)
                    new = owner.digest != owner.image.digest
                    owner.state = REFRESHED if new else UNCHANGED  # unchanged: its lock held
                except (KilnError, OSError) as exc:  # the updates; its children may not
                    owner.state, owner.error = FAILED, _message(exc)
            if owner.state == FAILED:
                log(f"{name}: failed: {owner.error}")
            if owner.state != UNCHANGED:
                _record(workspace, owner, options)
            if owner.state == FAILED:
                continue
            try:
                reached |= _propagate(workspace, owner, options, log)
            except (KilnError, OSError) as exc:
                owner.error = _message(exc)
                log(f"{name}: {owner.error}")
    return {
        "security_only": options.security_only,
        "channel": options.promote,
        "outdated": sum(1 for item in found if item.updates),
        "images": [owner.to_json() for owner in todo],
        "ok": all(owner.state != FAILED and owner.error is None for owner in todo),
    }


def _message(exc: KilnError | OSError) -> str:
    error = exc if isinstance(exc, KilnError) else from_os_error(exc, "kiln refresh")
    return error.message + (f" ({error.hint})" if error.hint else "")
