"""`kiln rebuild REF --prove`: bake an image and its parent chain again, from scratch, from
the locks they were baked with, and show that the digest comes out the same.

1. The chain: the image and its ancestors (the catalog's parents), root first; each with
   the lock the bake kept as a referrer (kiln.store.artefacts, checked by digest).
2. Its inputs, before anything is baked: each recipe (the catalog's path, checked against
   the digest it keeps), each copied input against the digest the bake's provenance
   recorded, and the cache key they give against the image's. Anything changed or
   missing fails the proof without a bake.
3. A fresh KILN_HOME inside the store's tmp area (same file system, removed at the end,
   also on error): no image cache, no unpacked layers. The recipes and their inputs are
   copied into it, each with its stored lock beside it, and baked root first. The real
   package cache lends its .debs (each checked by sha256 as it is linked in) unless
   ``package_cache`` is off: then every package comes from the mirror, and each locked
   version the mirror no longer serves is named.
4. Each rebuilt digest against the stored one; on a mismatch, the file and package diff.
5. One ``proofs`` row and one ``proved`` event per image of the chain that was rebuilt,
   in one transaction.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import locks
from kiln.app import resolve
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import ImageRow
from kiln.digests import file_sha256
from kiln.errors import BadInput, KilnError, RecipeError
from kiln.home import Home
from kiln.lifecycle.proofs import Changed, changed_inputs, recorded_inputs
from kiln.recipe import lockfile
from kiln.recipe.limits import MAX_RECIPE_BYTES, read_regular
from kiln.recipe.lockfile import Deb, Lock
from kiln.store import artefacts

if TYPE_CHECKING:
    from kiln.bake.bake import Parent
    from kiln.bake.options import Options
    from kiln.recipe import RecipeFile

Log = Callable[[str], None]
MAX_CHAIN = 64  # ancestors followed; a longer chain is a damaged catalog


@dataclass(frozen=True)
class _Scratch(Home):
    """A KILN_HOME of the proof's own: its catalog is always its own SQLite file, even
    when the real one is PostgreSQL (KILN_CATALOG_URL)."""

    @property
    def catalog_url(self) -> str:
        return f"sqlite:///{self.root / 'catalog.db'}"


@dataclass
class Link:
    """One image of the chain, with what its bake recorded."""

    row: ImageRow
    lock_text: bytes
    lock: Lock
    locked: bool  # baked from a lock file (else from the packages it resolved to)
    provenance: dict[str, Any]
    rebuilt: str = ""
    ok: bool = False
    diff: dict[str, Any] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.row.ref,
            "digest": self.row.digest,
            "rebuilt": self.rebuilt or None,
            "ok": self.ok,
            "locked": self.locked,
            "diff": self.diff,
            "note": self.note or None,
        }


@dataclass
class Result:
    ref: str
    digest: str
    package_cache: bool
    chain: list[Link]
    inputs: list[Changed] = field(default_factory=list)
    unserved: list[Deb] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return bool(self.chain) and all(link.ok for link in self.chain) and not self.error

    @property
    def rebuilt(self) -> str:
        return self.chain[-1].rebuilt

    def detail(self) -> dict[str, Any]:
        return {
            "chain": [link.to_json() for link in self.chain],
            "inputs": [changed.to_json() for changed in self.inputs],
            "unserved": [_deb_json(deb) for deb in self.unserved],
            "error": self.error,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "rebuilt": self.rebuilt or None,
            "ok": self.ok,
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(self.seconds, 3),
            "package_cache": self.package_cache,
            **self.detail(),
        }


def _deb_json(deb: Deb) -> dict[str, str]:
    return {"name": deb.name, "architecture": deb.architecture, "version": deb.version}


def rebuild(
    workspace: Workspace,
    ref: str,
    prove: bool = True,
    package_cache: bool = True,
    mirror: str | None = None,
    log: Log = lambda _line: None,
) -> Result:
    """Rebuild ``ref`` and its parent chain from scratch and record whether it reproduced."""
    if not prove:
        raise BadInput(
            "kiln rebuild needs --prove for now: it bakes the image and its parents again in a "
            "fresh KILN_HOME from their stored locks and compares the digests",
            hint=f"kiln rebuild {ref} --prove",
        )
    from kiln.bake.options import Options

    started = time.monotonic()
    row = resolve.image(workspace, ref, usable=False)
    result = Result(row.ref, row.digest, package_cache, _chain(workspace, row))
    options = Options(no_cache=True, mirror=mirror)
    for link in result.chain:
        result.inputs += check_inputs(link, options)
    if not result.inputs:
        _rebake(workspace, result, options, log)
    result.seconds = time.monotonic() - started
    _record(workspace, result)
    return result


def _chain(workspace: Workspace, row: ImageRow) -> list[Link]:
    """The image and its ancestors, root first, each with its stored lock."""
    rows = [row]
    while rows[-1].parent_id is not None:
        if len(rows) > MAX_CHAIN:
            raise KilnError(f"{row.ref} has more than {MAX_CHAIN} ancestors in the catalog")
        parent = workspace.lookup.by_ids([rows[-1].parent_id]).get(rows[-1].parent_id)
        if parent is None:
            raise KilnError(f"{rows[-1].ref}'s parent is not in the catalog", hint="kiln fsck")
        rows.append(parent)
    links = []
    layout = workspace.layout
    for image in reversed(rows):
        text = artefacts.find(layout, image.digest, artefacts.LOCK)
        if text is None:
            if any(not p.sha256 for p in workspace.lookup.packages(image.id)):
                raise BadInput(
                    f"{image.ref} keeps no lock: some of its packages came without a .deb "
                    "(an imported base), so it cannot be rebuilt from one",
                    hint="bake it on a Debian base (bootstrap) to have images a proof rebuilds",
                )
            raise BadInput(
                f"{image.ref} was baked before kiln kept locks: rebake it",
                hint=f"kiln bake --no-cache {image.recipe_path}, then prove the new version",
            )
        raw = artefacts.find(layout, image.digest, "provenance")
        provenance: dict[str, Any] = json.loads(raw) if raw is not None else {}
        dependencies = provenance.get("predicate", {}).get("buildDefinition", {})
        locked = any(d.get("name") == "lock" for d in dependencies.get("resolvedDependencies", []))
        lock = _parse_lock(workspace, text, image)
        links.append(Link(image, text, lock, locked, provenance))
    return links


def _parse_lock(workspace: Workspace, text: bytes, row: ImageRow) -> Lock:
    """The stored lock, read by the lock file parser (every line validated: its names
    become file names in the package cache)."""
    with locks.scratch_dir(workspace.home.tmp, "lock-") as folder:
        path = Path(folder) / f"{row.name}.toml.lock"
        path.write_bytes(text)
        try:
            return lockfile.parse(path)
        except RecipeError as exc:
            raise KilnError(
                f"the lock stored with {row.ref} does not parse: {exc.message}", hint="kiln fsck"
            ) from None


# inputs


def check_inputs(link: Link, options: Options) -> list[Changed]:
    """What of the recipe and its inputs is not what the image was baked from."""
    from kiln.bake import cachekey
    from kiln.bake.bake import key_document
    from kiln.recipe import load_recipe

    row = link.row
    path = Path(row.recipe_path)
    expected = f"sha256:{row.recipe_digest}"
    try:
        data = read_regular(path, MAX_RECIPE_BYTES, "recipe")
    except BadInput:  # not there, not a regular file, too large
        return [Changed(str(path), "recipe", path.name, expected, None)]
    found = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if found != expected:
        return [Changed(str(path), "recipe", path.name, expected, found)]
    recorded = recorded_inputs(link.provenance)
    try:
        recipe = load_recipe(path)
    except BadInput as exc:
        gone = [
            Changed(str(path), key, rel, f"sha256:{digest}", None)
            for key, (rel, digest) in sorted(recorded.items())
            if not os.path.lexists(path.parent / rel)
        ]
        return gone or [Changed(str(path), "recipe folder", path.name, expected, str(exc))]
    found_now = cachekey.materials(recipe)
    now = [(m.key, m.path, m.digest) for m in found_now]
    changed = changed_inputs(str(path), recorded, now)
    if changed:
        return changed
    # kiln's own step and pipeline versions and a base's Debian sources count here too
    keyed = link.lock if link.locked else None
    key = cachekey.key_of(key_document(recipe, link.lock.parent, keyed, options, found_now))
    if key != row.cache_key:
        return [Changed(str(path), "cache key", path.name, row.cache_key, key)]
    return []


# the rebuild


def _rebake(workspace: Workspace, result: Result, options: Options, log: Log) -> None:
    from kiln.bake.debcache import Unserved
    from kiln.mounts import remove_tree

    folder, held = locks.owned_dir(workspace.home.tmp, "proof-")
    scratch = Workspace(_Scratch(folder / "home"))
    try:
        log(f"rebuilding {len(result.chain)} image(s) in {folder}")
        if result.package_cache:
            _lend_debs(workspace.home, scratch.home, result.chain)
        _fetch_debs(scratch.home, result.chain, options)
        parent: Parent | None = None
        for link in result.chain:
            recipe = _copy_recipe(link, folder / "recipes")
            made = _bake_one(scratch, recipe, parent, link, options, log)
            link.rebuilt = made.digest
            link.ok = made.digest == link.row.digest
            if not link.ok:
                link.diff = _diff(workspace, link.row, scratch, made.ref)
                break
            parent = _parent(scratch, recipe, made.ref)
        for link in result.chain:
            if not link.rebuilt:
                link.note = "not rebuilt: an ancestor did not reproduce"
    except Unserved as exc:
        result.unserved = list(exc.debs)
        result.error = exc.message
    except KilnError as exc:
        result.error = exc.message + (f" ({exc.hint})" if exc.hint else "")
    finally:
        try:
            scratch.close()
            remove_tree(folder)  # while it is still held: kiln gc never takes it meanwhile
        finally:
            held.release()


def _lend_debs(real: Home, scratch: Home, chain: list[Link]) -> None:
    """Link the chain's locked .debs from the real package cache into the scratch one, each
    checked by sha256 first (the real cache is only read)."""
    from kiln.bake.debcache import PackageCache

    source = PackageCache(real.debs)
    target = PackageCache(scratch.debs)
    target.by_name.mkdir(parents=True, exist_ok=True)
    wanted = {deb for link in chain for deb in link.lock.packages}
    for deb in sorted(wanted):
        path = source.path(deb.sha256)
        if not path.is_file() or file_sha256(path) != deb.sha256:
            continue  # fetched from the mirror by the bake, like any missing package
        copy = target.path(deb.sha256)
        if copy.exists():
            continue
        try:
            os.link(path, copy)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(path, copy)
        if not (target.by_name / deb.filename).exists():
            os.link(copy, target.by_name / deb.filename)


def _fetch_debs(scratch: Home, chain: list[Link], options: Options) -> None:
    """Every locked .deb of the chain not in the scratch cache, fetched from the mirror in
    one go before any bake, so each version the mirror lacks is named, whichever image of
    the chain locked it. The root's Debian suite (or the host's) says where to look."""
    from kiln.apt.sources import mirror_lines, os_codename
    from kiln.bake.bases import debian
    from kiln.bake.debcache import PackageCache
    from kiln.recipe import load_recipe

    cache = PackageCache(scratch.debs)
    wanted = {deb for link in chain for deb in link.lock.packages}
    if all(cache.has(deb) for deb in wanted):
        return
    spec = load_recipe(Path(chain[0].row.recipe_path)).recipe.image.bootstrap
    if spec is not None:
        lines = debian.fetch_sources(spec, options.mirror)
    else:
        lines = mirror_lines(os_codename(Path("/")) or "stable", options.mirror)
    cache.fetch(wanted, lines, scratch.tmp)


def _copy_recipe(link: Link, top: Path) -> RecipeFile:
    """The recipe and its inputs copied under ``top`` at their own absolute paths (so a
    parent named by a relative recipe path is found too), with the stored lock beside a
    locked recipe; the copy is checked against the record again.

    What is copied is what the loader finds the recipe reads (inside its folder, as it
    checks), never a path read from the stored provenance."""
    from kiln.bake import cachekey
    from kiln.recipe import load_recipe

    original = load_recipe(Path(os.path.realpath(link.row.recipe_path)))
    folder = original.folder

    def place(source: Path) -> Path:
        target = top / str(source).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    copy = place(original.path)
    shutil.copyfile(original.path, copy)
    for material in cachekey.materials(original):
        source = material.source
        if not source.is_relative_to(folder):
            raise KilnError(f"{original.path}: {material.key} reads {source}, outside {folder}")
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, place(source), symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, place(source), follow_symlinks=False)
    parent = original.parent_recipe_path()
    if parent is not None and not place(parent).exists():
        shutil.copyfile(parent, place(parent))
    if link.locked:
        lockfile.lock_path(copy).write_bytes(link.lock_text)
    recipe = load_recipe(copy)
    if recipe.digest != link.row.recipe_digest:
        raise KilnError(f"{original.path} changed while it was being copied", hint="prove it again")
    now = [(m.key, m.path, m.digest) for m in cachekey.materials(recipe)]
    changed = changed_inputs(str(original.path), recorded_inputs(link.provenance), now)
    if changed:
        raise KilnError(changed[0].line() + " (while it was being copied)", hint="prove it again")
    return recipe


def _parent(scratch: Workspace, recipe: RecipeFile, ref: str) -> Parent:
    from kiln.app.bake import parent_of

    found = parent_of(scratch, recipe, ref)
    assert found is not None
    return found


def _bake_one(
    scratch: Workspace,
    recipe: RecipeFile,
    parent: Parent | None,
    link: Link,
    options: Options,
    log: Log,
) -> Any:
    """One bake in the scratch home from the stored lock, keyed as the original bake was
    (by its lock file, or without one for an image baked unlocked)."""
    from kiln.bake import build, cachekey
    from kiln.bake.bake import build_context, key_document

    lock = link.lock
    found = cachekey.materials(recipe)
    keyed = lock if link.locked else None
    parent_digest = parent.image.digest if parent else None
    key = cachekey.key_of(key_document(recipe, parent_digest, keyed, options, found))
    build_dir, held = locks.owned_dir(scratch.home.builds, f"{recipe.name}-")
    with held:
        context = build_context(scratch, recipe, parent, options, key, build_dir, log)
        context.lock, context.materials = lock, found
        context.source_date_epoch = lock.source_date_epoch
        return build.bake(context)


def _diff(workspace: Workspace, stored: ImageRow, scratch: Workspace, ref: str) -> dict[str, Any]:
    """Files and packages from the stored image to the rebuilt one, and the config keys
    that differ."""
    from kiln.app.images import _debs
    from kiln.store import tree

    old = resolve.load(workspace, stored)
    new_row, new = resolve.image_and_bytes(scratch, ref, usable=False)
    files = tree.diff(old.layer_dirs, new.layer_dirs)
    packages = lockfile.diff(
        _debs(workspace.lookup.packages(stored.id)), _debs(scratch.lookup.packages(new_row.id))
    ).to_json()
    return {
        "files": {"added": files.added, "modified": files.modified, "deleted": files.deleted},
        "packages": packages,
        "config": _config_diff(old.config, new.config),
    }


def _config_diff(old: dict[str, Any], new: dict[str, Any], where: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{where}{key}.")
        else:
            out.append(f"{where}{key}")
    return out


# the record


def _record(workspace: Workspace, result: Result) -> None:
    """A proofs row and a ``proved`` event for each image of the chain the proof reached,
    in one transaction (the image asked for always gets one)."""
    from kiln.actor import actor
    from kiln.catalog import events
    from kiln.catalog.freshness import Proof

    detail = json.dumps(result.detail(), sort_keys=True)
    reached = [link for link in result.chain if link.rebuilt] or result.chain[-1:]
    if result.chain[-1] not in reached:
        reached.append(result.chain[-1])
    with workspace.catalog.session() as session:
        for link in reached:
            mine = link is result.chain[-1]
            ok = result.ok if mine else link.ok
            session.add(
                Proof(
                    image_id=link.row.id,
                    digest=link.row.digest,
                    rebuilt=link.rebuilt,
                    ok=ok,
                    at=result.at,
                    seconds=result.seconds,
                    package_cache=result.package_cache,
                    actor=actor(),
                    detail=detail if mine else json.dumps(link.to_json(), sort_keys=True),
                )
            )
            events.record(
                session,
                "proved",
                link.row.name,
                link.row.version,
                link.row.digest,
                at=result.at,
                ok=ok,
                rebuilt=link.rebuilt or None,
                package_cache=result.package_cache,
                **({} if mine else {"of": result.ref}),
            )
