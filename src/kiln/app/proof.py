"""`kiln rebuild REF --prove`: bake an image and its parent chain again, from scratch, from
the locks they were baked with, and show that the digest comes out the same.

1. The chain: the image and its ancestors (the catalog's parents), root first; each with
   the lock the bake kept as a referrer (kiln.store.artefacts, checked by digest), and
   its source archive (kiln.store.archive: the recipe and the files it read).
2. A fresh KILN_HOME inside the store's tmp area (same file system, removed at the end,
   also on error): no image cache, no unpacked layers. Each image's source archive is
   unpacked into it (checked member by member, as hostile input), and what it unpacks
   to is checked before anything is baked: the recipe against the digest the catalog
   keeps, each input against the digest the bake's provenance recorded, and the cache
   key they give against the image's. An image baked before kiln kept source archives
   is rebuilt from the recipe folder as it is now, checked the same way, and copied in.
   Each recipe gets its stored lock beside it, and they are baked root first. The real
   package cache lends its .debs (each checked by sha256 as it is linked in) unless
   ``package_cache`` is off: then every package comes from the mirror, and each locked
   version the mirror no longer serves is named.
3. Each rebuilt digest against the stored one; on a mismatch, the file and package diff.
4. One ``proofs`` row and one ``proved`` event per image of the chain that was rebuilt,
   in one transaction.

A proof that cannot start (no stored lock, a source archive that does not unpack to what
the image was baked from, a recipe folder that changed since a bake that kept no source
archive) rebuilds nothing and records nothing: its result says why (``cannot``), and
``kiln rebuild`` exits 2, never 1, which stays for a rebuild that does not reproduce.
"""

from __future__ import annotations

import errno
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
from kiln.app.proofsources import NO_ARCHIVE, CannotRebuild, Link, check_inputs, place
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import ImageRow
from kiln.digests import file_sha256
from kiln.errors import BadInput, KilnError, RecipeError
from kiln.home import Home
from kiln.lifecycle.proofs import Changed
from kiln.recipe import lockfile
from kiln.recipe.lockfile import Deb, Lock
from kiln.store import archive, artefacts
from kiln.times import rfc3339

if TYPE_CHECKING:
    from kiln.bake.options import Options
    from kiln.bake.pipeline import Parent
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
class Result:
    ref: str
    digest: str
    package_cache: bool
    chain: list[Link]
    inputs: list[Changed] = field(default_factory=list)
    unserved: list[Deb] = field(default_factory=list)
    error: str | None = None
    cannot: str | None = None  # why the proof could not start
    seconds: float = 0.0
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        ok = bool(self.chain) and all(link.ok for link in self.chain)
        return ok and not self.error and not self.cannot

    @property
    def rebuilt(self) -> str:
        return self.chain[-1].rebuilt if self.chain else ""

    def detail(self) -> dict[str, Any]:
        return {
            "chain": [link.to_json() for link in self.chain],
            "inputs": [changed.to_json() for changed in self.inputs],
            "unserved": [_deb_json(deb) for deb in self.unserved],
            "error": self.error,
            "cannot": self.cannot,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "rebuilt": self.rebuilt or None,
            "ok": self.ok,
            "at": rfc3339(self.at),
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
    try:
        chain = _chain(workspace, row)
    except CannotRebuild as exc:
        return Result(row.ref, row.digest, package_cache, [], cannot=_message(exc))
    result = Result(row.ref, row.digest, package_cache, chain)
    options = Options(no_cache=True, mirror=mirror)
    for link in result.chain:  # from the checkout: only what keeps no source archive
        if link.source is None:
            result.inputs += check_inputs(link, options)
    if result.inputs:
        result.cannot = NO_ARCHIVE
    else:
        _rebake(workspace, result, options, log)
    result.seconds = time.monotonic() - started
    if result.cannot is None:
        _record(workspace, result)
    return result


def _message(exc: KilnError) -> str:
    return exc.message + (f"; {exc.hint}" if exc.hint else "")


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
                raise CannotRebuild(
                    f"{image.ref} keeps no lock: some of its packages came without a .deb "
                    "(an imported base), so it cannot be rebuilt from one",
                    hint="bake it on a Debian base (bootstrap) to have images a proof rebuilds",
                )
            raise CannotRebuild(
                f"{image.ref} was baked before kiln kept locks: rebake it",
                hint=f"kiln bake --no-cache {image.recipe_path}, then prove the new version",
            )
        raw = artefacts.find(layout, image.digest, "provenance")
        provenance: dict[str, Any] = json.loads(raw) if raw is not None else {}
        dependencies = provenance.get("predicate", {}).get("buildDefinition", {})
        locked = any(d.get("name") == "lock" for d in dependencies.get("resolvedDependencies", []))
        lock = _parse_lock(workspace, text, image)
        source = artefacts.find(layout, image.digest, archive.KIND)
        links.append(Link(image, text, lock, locked, provenance, source))
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


# the rebuild


def _rebake(workspace: Workspace, result: Result, options: Options, log: Log) -> None:
    from kiln.bake.debcache import Unserved
    from kiln.mounts import remove_tree

    folder, held = locks.owned_dir(workspace.home.tmp, "proof-")
    scratch = Workspace(_Scratch(folder / "home"))
    try:
        log(f"rebuilding {len(result.chain)} image(s) in {folder}")
        recipes: list[RecipeFile] = []
        for n, link in enumerate(result.chain):  # every one placed and checked, then baked
            top = folder / "recipes" / str(n)
            recipes.append(place(link, top, options, recipes[-1] if recipes else None))
        if result.package_cache:
            _lend_debs(workspace.home, scratch.home, result.chain)
        _fetch_debs(scratch.home, result.chain, recipes[0], options)
        parent: Parent | None = None
        for link, recipe in zip(result.chain, recipes, strict=True):
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
    except CannotRebuild as exc:
        result.cannot = _message(exc)
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


def _fetch_debs(scratch: Home, chain: list[Link], root: RecipeFile, options: Options) -> None:
    """Every locked .deb of the chain not in the scratch cache, fetched from the mirror in
    one go before any bake, so each version the mirror lacks is named, whichever image of
    the chain locked it. The root's Debian suite (``root``: its recipe as the proof bakes
    it; else the host's) says where to look."""
    from kiln.apt.sources import mirror_lines, os_codename
    from kiln.bake.bases import debian
    from kiln.bake.debcache import PackageCache

    cache = PackageCache(scratch.debs)
    wanted = {deb for link in chain for deb in link.lock.packages}
    if all(cache.has(deb) for deb in wanted):
        return
    spec = root.recipe.image.bootstrap
    if spec is not None:
        lines = debian.fetch_sources(spec, options.mirror)
    else:
        lines = mirror_lines(os_codename(Path("/")) or "stable", options.mirror)
    cache.fetch(wanted, lines, scratch.tmp)


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
    from kiln.bake.pipeline import build_context

    lock = link.lock
    found = cachekey.materials(recipe)
    keyed = lock if link.locked else None
    parent_digest = parent.image.digest if parent else None
    key = cachekey.key_of(
        cachekey.bake_document(recipe, parent_digest, keyed, options.mirror, found)
    )
    build_dir, held = locks.owned_dir(scratch.home.builds, f"{recipe.name}-")
    with held:
        context = build_context(
            scratch,
            recipe,
            parent,
            options,
            key,
            build_dir,
            log,
            lock,
            found,
            lock.source_date_epoch,
        )
        return build.build_image(context)


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
