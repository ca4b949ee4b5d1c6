"""One bake, as a straight pipeline over a BuildContext.

    prepare_root -> install_packages -> run_steps -> enable_services -> seal_root
    -> record_packages -> close_root -> capture_layer -> commit

Each stage decides for itself whether it applies. The build folder and the overlay mount
belong to one context manager, so a failure leaves nothing behind in the store or catalog
(or keeps the root on purpose with --on-error=keep).

Progress goes through ``context.log``: a message ending in :data:`ONGOING` says what is
starting (a spinner shows it; a log file does not need it), and each stage ends with one
line that gives its time (``run steps  3.21s``). Commands' own output is echoed, labelled
with the recipe and stage or step, inside ``kiln.proc.echo_to``.

:func:`resolve` is the throw-away bake ``kiln lock`` resolves packages with: it runs the
stages up to the package record, then removes the root; nothing reaches the store or
the catalog.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kiln import proc, steps
from kiln.atomic import make_dirs
from kiln.bake import again, image, packages, seal, services, source
from kiln.bake.bases import debian, imported
from kiln.bake.context import BuildContext
from kiln.bake.result import ONGOING, BakeResult
from kiln.catalog import events, versions
from kiln.catalog.db import Catalog, Conflict
from kiln.catalog.models import Artefact, Image, Package
from kiln.catalog.revisions import PENDING
from kiln.digests import canonical_json
from kiln.errors import KilnError
from kiln.mounts import Overlay, remove_tree
from kiln.recipe import lockfile
from kiln.recipe.limits import MAX_LOCK_BYTES, read_regular
from kiln.recipe.lockfile import Lock
from kiln.rootpath import Root
from kiln.sandbox import MOUNT_POINT_FILES
from kiln.steps.target import Target
from kiln.store import archive, artefacts, inventory
from kiln.store import layer as layers
from kiln.store.gc import store_in_use
from kiln.store.layout import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor
from kiln.times import rfc3339

# The end of a message that says what is starting (progress, not a result).


def prepare_root(context: BuildContext) -> None:
    origin = context.recipe.recipe.image.origin
    if context.parent is not None:
        overlay = Overlay(
            lowers=list(reversed(context.parent.layer_dirs)),
            upper=context.build_dir / "upper",
            work=context.build_dir / "work",
            target=context.root,
        )
        context.overlay = overlay  # unmounted by _BuildFolder, or kept mounted for --on-error=keep
        overlay.mount()
        context.layer_source = overlay.upper
    elif origin == "bootstrap":
        debian.bootstrap(context)
    elif origin == "import":
        source = context.recipe.resolve(context.recipe.recipe.image.import_ or "")
        imported.import_root(source, context.root, context.home.tmp)
        image.import_special(context)  # what the vendor's tree holds, before any step runs
    else:
        make_dirs(context.root)
    with Root(context.root) as root:
        context.created_mount_points = [rel for rel in MOUNT_POINT_FILES if not root.exists(rel)]


def install_packages(context: BuildContext) -> None:
    if context.recipe.recipe.image.origin == "bootstrap":
        return  # mmdebstrap installed them with the base
    packages.install(context, context.recipe.recipe.packages.apt)


def run_steps(context: BuildContext) -> None:
    """Apply each step (kiln.steps) to the build root; each command runs in a fresh
    systemd-nspawn with the bake's environment, kiln's tooling bound in where a step
    needs it."""
    target = Target.sandboxed(
        f"the build root of {context.recipe.name}",
        context.sandbox,
        context.recipe.folder,
        Path(sys.prefix),
    )
    for index, step in enumerate(context.recipe.recipe.steps):
        kind = steps.kind_of(step).name
        where = context.recipe.where("steps", index)
        context.log(f"steps[{index}] {kind}{ONGOING}")
        with proc.prefixed(f"{context.recipe.name} steps[{index}] | "):
            steps.apply_at(
                target,
                step,
                index,
                where,
                hint=(
                    "the build root is kept: the lines above say how to enter it"
                    if context.options.keep_on_error
                    else "re-run with --on-error=keep to keep the build root and look inside"
                ),
            )


def enable_services(context: BuildContext) -> None:
    services.apply(context)


def seal_root(context: BuildContext) -> None:
    context.seal_checks = seal.seal(context)


def record_packages(context: BuildContext) -> None:
    packages.record(context)
    packages.verify_lock(context)


def close_root(context: BuildContext) -> None:
    """Remove files nspawn made only to mount on, then unmount the overlay.

    (The folders nspawn makes for a bind go when its command ends: kiln.sandbox.)"""
    with Root(context.root) as root:
        for rel in context.created_mount_points:
            if not root.exists(rel):
                continue
            st = root.lstat(rel)  # never followed: a step may have made it a symlink
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                root.remove(rel)
    if context.overlay is not None:
        context.overlay.unmount()


STAGES: list[Callable[[BuildContext], None]] = [
    prepare_root,
    install_packages,
    run_steps,
    enable_services,
    seal_root,
    record_packages,
    close_root,
]


# What kiln lock's throw-away bake needs: the root as the recipe makes it, and its packages.
RESOLVE_STAGES: list[Callable[[BuildContext], None]] = [
    prepare_root,
    install_packages,
    run_steps,
    record_packages,
    close_root,
]


def _title(name: str) -> str:
    return name.replace("_", " ")


def _run_stages(
    context: BuildContext, stages: list[Callable[[BuildContext], None]], times: dict[str, float]
) -> None:
    for stage in stages:
        begin = time.monotonic()
        title = _title(stage.__name__)
        context.log(f"{title}{ONGOING}")
        with proc.prefixed(f"{context.recipe.name} {title} | "):
            stage(context)
        times[stage.__name__] = time.monotonic() - begin
        context.log(f"{title}  {times[stage.__name__]:.2f}s")


def resolve(context: BuildContext) -> None:
    """Bake as far as the package record, then throw the root away (kiln lock)."""
    make_dirs(context.build_dir)  # the caller owns it (kiln.locks)
    with _BuildFolder(context) as folder:
        _run_stages(context, RESOLVE_STAGES, {})
        folder.success = True


def bake(context: BuildContext) -> BakeResult:
    started = time.monotonic()
    stages: dict[str, float] = {}
    if context.source_date_epoch is None:
        # Unlocked and unstamped: stamp it with when it started, which the lock it keeps
        # says, so a rebuild from that lock can make the same bytes (kiln rebuild --prove).
        context.source_date_epoch = int(context.started.timestamp())
    make_dirs(context.build_dir)  # the caller owns it (kiln.locks)
    with _BuildFolder(context) as folder:
        _run_stages(context, STAGES, stages)
        # From the first byte of the new layer until its tag is written, the blobs and the
        # unpacked layer are referenced by nothing yet: keep kiln gc's sweep out meanwhile.
        with store_in_use(context.home):
            begin = time.monotonic()
            context.log(f"capture layer{ONGOING}")
            lowers = context.parent.layer_dirs if context.parent else ()
            seal.drop_sockets(context.layer_source)
            captured = layers.capture(
                context.layout,
                context.home.tmp,
                context.layer_source,
                lowers,
                source_date_epoch=context.source_date_epoch,
            )
            stages["capture_layer"] = time.monotonic() - begin
            context.log(f"capture layer  {stages['capture_layer']:.2f}s")
            begin = time.monotonic()
            result = commit(
                context, captured.descriptor, captured.diff_id, time.monotonic() - started
            )
            stages["commit"] = time.monotonic() - begin
            context.log(f"commit  {stages['commit']:.2f}s")
        folder.success = True
    result.stages = stages
    result.seconds = time.monotonic() - started
    return result


class _BuildFolder:
    """Unmount and remove the build folder at the end; on failure keep it if asked to."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self.success = False

    def __enter__(self) -> _BuildFolder:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        context = self.context
        if not self.success and context.options.keep_on_error:
            root = context.root
            context.log(
                f"kept the build root: {root}\n"
                f"  enter it:  systemd-nspawn --register=no -D {root}\n"
                f"  clean up:  kiln gc (or: umount {root}; rm -rf {context.build_dir})"
            )
            return
        try:
            if context.overlay is not None:
                context.overlay.unmount()
            remove_tree(context.build_dir)
        except KilnError as cleanup:
            if exc is None:
                raise
            # the bake's own error matters more; say what was left behind
            context.log(f"could not clean up {context.build_dir}: {cleanup.message}")


def _move_layer(context: BuildContext, diff_id: str) -> None:
    """Keep the unpacked layer (overlay form) under layers/<hex> for later stacking."""
    target = context.home.layers / diff_id.split(":", 1)[1]
    if target.exists():
        return
    try:
        os.replace(context.layer_source, target)
    except OSError as exc:
        # a bake of the same layer moved its copy in first: keep that one
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise


def _artefacts(
    context: BuildContext,
    ref: str,
    version: int,
    manifest: Descriptor,
    layer: Descriptor,
    stamped: datetime,
) -> list[tuple[Descriptor, Artefact]]:
    """Provenance, SBOM and the layers' file inventories, stored as referrers of the image
    manifest."""
    # cyclonedx is slow to import; a cache hit never needs it
    from kiln.bake import provenance, sbom

    finished = datetime.now(UTC)
    documents = [
        (
            "provenance",
            provenance.MEDIA_TYPE,
            canonical_json(
                provenance.statement(context, ref, manifest.digest, layer.digest, finished)
            ),
        ),
        (
            "sbom",
            sbom.MEDIA_TYPE,
            sbom.sbom(
                context.recipe.name,
                version,
                manifest.digest,
                context.packages,
                stamped,
                context.distro,
            ).encode(),
        ),
    ]
    lock = _lock_text(context)
    if lock is not None:  # and what a proof rebuilds from with it (kiln.bake.source)
        documents.append((artefacts.LOCK, artefacts.MEDIA_LOCK, lock))
        kept = source.pack(context.recipe, context.materials, context.home.tmp)
        if kept is not None:
            documents.append((archive.KIND, archive.MEDIA_TYPE, kept))
    out = []
    created = rfc3339(stamped)
    for kind, media_type, data in documents:
        descriptor = artefacts.put(context.layout, manifest, kind, media_type, data, created)
        blob = context.layout.read_json(descriptor.digest)["layers"][0]["digest"]
        out.append(
            (
                descriptor,
                Artefact(
                    kind=kind, media_type=media_type, manifest_digest=descriptor.digest, digest=blob
                ),
            )
        )
    parent = context.parent.manifest.digest if context.parent else None
    files, top = inventory.attach(context.layout, context.home.layers, manifest, parent, created)
    kind, media_type = inventory.ARTEFACT, inventory.MEDIA_TYPE
    out.append(
        (
            files,
            Artefact(kind=kind, media_type=media_type, manifest_digest=files.digest, digest=top),
        )
    )
    return out


def _lock_text(context: BuildContext) -> bytes | None:
    """The lock the image was baked from, kept so it can be rebuilt from it later: the lock
    file's own bytes, or for an unlocked bake the lock its packages resolved to. None when
    a package's .deb was never seen (an imported base): such an image has no lock."""
    lock = context.lock
    if lock is not None and not lockfile.lock_path(context.recipe.path).is_file():
        return lock.render(context.recipe.path.name).encode()  # handed over, not read (a proof)
    if lock is not None:
        path = lockfile.lock_path(context.recipe.path)
        data = read_regular(path, MAX_LOCK_BYTES, "lock file")
        if hashlib.sha256(data).hexdigest() != lock.digest:
            raise KilnError(
                f"{path} changed while {context.recipe.name} was being baked from it",
                hint="bake again",
            )
        return data
    if context.source_date_epoch is None or not all(d.sha256 for d in context.packages):
        return None
    parent = context.parent.manifest.digest if context.parent else None
    resolved = Lock(parent, context.source_date_epoch, tuple(sorted(context.packages)))
    return resolved.render(context.recipe.path.name).encode()


def commit(context: BuildContext, layer: Descriptor, diff_id: str, seconds: float) -> BakeResult:
    """Write config and manifest, keep the layer, then record and tag.

    The version is taken first by a catalog row marked pending; then the artefacts are
    written and the image is tagged in the store; then the row is marked ok. A bake killed
    in between leaves a pending row (never shown as an image; ``kiln gc`` removes it, with
    its tag and blobs), never an image the catalog and the store disagree about.
    """
    created = datetime.now(UTC).replace(microsecond=0)
    stamped = created  # what the image says: the lock's SOURCE_DATE_EPOCH when reproducible
    if context.source_date_epoch is not None:
        stamped = datetime.fromtimestamp(context.source_date_epoch, UTC)
    config_desc = context.layout.put_json(image.config(context, diff_id, stamped), MEDIA_CONFIG)
    manifest_desc = context.layout.put_json(
        image.manifest(context, config_desc, layer), MEDIA_MANIFEST
    )
    _move_layer(context, diff_id)
    recipe = context.recipe
    held = versions.holding(context.catalog.lookup(), recipe.name, manifest_desc.digest)
    if held:  # a rebuild (--no-cache) that reproduced a version: no second copy of it
        parent = context.parent
        made_on = (context.parent_id, parent.ref) if parent and context.parent_id else None
        return again.settle(
            context.catalog,
            context.layout,
            recipe,
            made_on,
            held[0],
            context.cache_key,
            time.monotonic() - seconds,
            cached=False,
        )

    def pending_row(version: int) -> Image:
        return Image(
            name=recipe.name,
            version=version,
            digest=manifest_desc.digest,
            config_digest=config_desc.digest,
            parent_id=context.parent_id,
            cache_key=context.cache_key,
            recipe_path=str(recipe.path),
            recipe_digest=recipe.digest,
            origin=recipe.recipe.image.origin,
            created=created,
            status=PENDING,
            size=layer.size,
            seconds=seconds,
            packages=[
                Package(
                    name=d.name, version=d.version, architecture=d.architecture, sha256=d.sha256
                )
                for d in context.packages
            ],
        )

    image_id, version = allocate(context.catalog, recipe.name, pending_row)
    ref = f"{recipe.name}:{version}"
    referrers: list[Descriptor] = []
    tagged = False
    try:
        artefacts = _artefacts(context, ref, version, manifest_desc, layer, stamped)
        referrers = [descriptor for descriptor, _row in artefacts]
        context.layout.tag(ref, manifest_desc, referrers)
        tagged = True
        with context.catalog.session() as session:
            done = session.get(Image, image_id)
            if done is None or done.status != PENDING:
                raise Conflict(
                    f"{ref} was removed from the catalog while it was being baked",
                    hint="was 'kiln gc' run against another store sharing this catalog? bake again",
                )
            done.artefacts = [artefact for _descriptor, artefact in artefacts]
            done.status = "ok"
            events.record(
                session,
                "baked",
                recipe.name,
                version,
                manifest_desc.digest,
                parent=context.parent.ref if context.parent else None,
                parent_named=recipe.recipe.image.parent,  # as written: base:prod, base.toml
                cache_key=context.cache_key,
            )
    except BaseException:
        _take_back(context, image_id, ref, manifest_desc.digest, referrers if tagged else None)
        raise
    return BakeResult(
        name=recipe.name,
        version=version,
        digest=manifest_desc.digest,
        cache_key=context.cache_key,
        cached=False,
        seconds=0.0,
        recipe=str(recipe.path),
    )


ALLOCATE_ATTEMPTS = 20


def allocate(catalog: Catalog, name: str, pending_row: Callable[[int], Image]) -> tuple[int, int]:
    """Take the next version of ``name`` with a pending row; return its id and version.

    On SQLite the write transaction is serialised; on PostgreSQL two bakes can pick the
    same number, and the unique (name, version) constraint makes the later one try again.
    """
    for attempt in range(ALLOCATE_ATTEMPTS):
        try:
            with catalog.session() as session:
                row = pending_row(catalog.next_version(session, name))
                session.add(row)
                session.flush()
                return row.id, row.version
        except Conflict:
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise Conflict(
        f"someone else got there first: every version of {name} tried was taken "
        f"by another bake ({ALLOCATE_ATTEMPTS} attempts)",
        hint="bake again",
    )


def _take_back(
    context: BuildContext,
    image_id: int,
    ref: str,
    digest: str,
    referrers: list[Descriptor] | None,
) -> None:
    """Undo a commit that did not finish, as far as possible (kiln gc does the rest)."""
    try:
        if referrers is not None:  # the catalog did not take it: the store must not name it
            context.layout.untag(ref, referrers, digest=digest)
        with context.catalog.session() as session:
            pending = session.get(Image, image_id)
            if pending is not None and pending.status == PENDING:
                session.delete(pending)
    except (KilnError, OSError) as exc:
        context.log(f"could not take back {ref}: {exc} (kiln gc removes it)")
