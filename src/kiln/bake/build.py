"""One bake, as one straight function over a frozen BuildContext: :func:`build_image`.

    prepare_root -> install_packages -> run_steps -> enable_services -> seal_root
    -> record_packages -> close_root -> capture_layer -> commit

Each stage takes the context and what earlier stages made, returns what it made, and
decides for itself whether it applies. A stage that writes into the image declares the
versions of what it writes (:func:`stage`): the cache key reads them from here, so a
change to a stage's output bumps its version and every image it made is rebaked.

The build folder and the overlay mount belong to one context manager, so a failure leaves
nothing behind in the store or catalog (or keeps the root on purpose with --on-error=keep).

Progress goes through ``context.log``: a message ending in :data:`ONGOING` says what is
starting (a spinner shows it; a log file does not need it), and each stage ends with one
line that gives its time (``run steps  3.21s``). Commands' own output is echoed, labelled
with the recipe and stage or step, inside ``kiln.proc.echo_to``.

:func:`resolve_root` is the throw-away bake ``kiln lock`` resolves packages with: the same
stages up to the package record, then the root is removed; nothing reaches the store or
the catalog.
"""

from __future__ import annotations

import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from kiln import proc, steps
from kiln.atomic import make_dirs
from kiln.bake import image, packages, seal, services
from kiln.bake.bases import debian, imported
from kiln.bake.context import BuildContext
from kiln.bake.image import Checks, Special
from kiln.bake.packages import Installed, Record, Seen
from kiln.bake.result import ONGOING, BakeResult
from kiln.errors import KilnError
from kiln.mounts import Overlay, remove_tree
from kiln.recipe.lockfile import Deb
from kiln.rootpath import Root
from kiln.sandbox import MOUNT_POINT_FILES
from kiln.steps.target import Target
from kiln.store import layer as layers
from kiln.store.gc import store_in_use

VERSION = 1  # of the pipeline itself: the order of its stages and what passes between them

P = ParamSpec("P")
T = TypeVar("T")
_VERSIONS: dict[str, int] = {}


def stage(versions: dict[str, int] | None = None) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Mark a function as a stage, with the versions of what it writes into an image
    (each kept beside the code it covers, as a step kind keeps its own)."""

    def mark(function: Callable[P, T]) -> Callable[P, T]:
        for name, version in (versions or {}).items():
            if name in _VERSIONS:
                raise TypeError(f"two stages declare the version of {name!r}")
            _VERSIONS[name] = version
        return function

    return mark


def stage_versions() -> dict[str, int]:
    """Every stage's versions, for the cache key (kiln.bake.cachekey)."""
    return dict(_VERSIONS)


def overlay_of(context: BuildContext) -> Overlay | None:
    """The overlay a bake on a parent mounts its root with (None for a base)."""
    if context.parent is None:
        return None
    return Overlay(
        lowers=list(reversed(context.parent.layer_dirs)),
        upper=context.layer_source,
        work=context.build_dir / "work",
        target=context.root,
    )


@dataclass(frozen=True)
class Prepared:
    """The root as prepare_root left it."""

    debs: Seen  # a Debian base's .debs
    mount_points: list[str]  # files nspawn will make only to mount on (close_root removes)
    special: Special | None  # an imported base's device nodes and setuid/setgid files


@stage({"debian": debian.VERSION, "import": imported.VERSION})
def prepare_root(context: BuildContext, overlay: Overlay | None) -> Prepared:
    origin = context.recipe.recipe.image.origin
    debs: Seen = {}
    special = None
    if overlay is not None:
        overlay.mount()  # unmounted by BuildFolder, or kept mounted for --on-error=keep
    elif origin == "bootstrap":
        debs = debian.bootstrap(context)
    elif origin == "import":
        source = context.recipe.resolve(context.recipe.recipe.image.import_ or "")
        imported.import_root(source, context.root, context.home.tmp)
        special = image.import_special(context)  # what the vendor's tree holds, before steps
    else:
        make_dirs(context.root)
    with Root(context.root) as root:
        created = [rel for rel in MOUNT_POINT_FILES if not root.exists(rel)]
    return Prepared(debs, created, special)


@stage({"packages": packages.VERSION})
def install_packages(context: BuildContext) -> Installed:
    if context.recipe.recipe.image.origin == "bootstrap":
        return Installed()  # mmdebstrap installed them with the base
    return packages.install(context, context.recipe.recipe.packages.apt)


@stage()  # each step kind keeps its own version (kiln.steps.versions)
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


@stage({"services": services.VERSION})
def enable_services(context: BuildContext) -> None:
    services.apply(context)


@stage({"seal": seal.VERSION})
def seal_root(context: BuildContext) -> Checks:
    return seal.seal(context)


@stage()
def record_packages(context: BuildContext, seen: Seen, unpacked: tuple[Deb, ...]) -> Record:
    record = packages.record(context, seen, unpacked)
    packages.verify_lock(context, record.packages)
    return record


@stage()
def close_root(context: BuildContext, overlay: Overlay | None, mount_points: list[str]) -> None:
    """Remove files nspawn made only to mount on, then unmount the overlay.

    (The folders nspawn makes for a bind go when its command ends: kiln.sandbox.)"""
    with Root(context.root) as root:
        for rel in mount_points:
            if not root.exists(rel):
                continue
            st = root.lstat(rel)  # never followed: a step may have made it a symlink
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                root.remove(rel)
    if overlay is not None:
        overlay.unmount()


@stage()
def capture_layer(context: BuildContext) -> layers.CapturedLayer:
    lowers = context.parent.layer_dirs if context.parent else ()
    seal.drop_sockets(context.layer_source)
    return layers.capture(
        context.layout,
        context.home.tmp,
        context.layer_source,
        lowers,
        source_date_epoch=context.source_date_epoch,
    )


def build_image(context: BuildContext) -> BakeResult:
    """Bake the recipe into a new image, every stage in order."""
    from kiln.bake.commit import Built, commit  # SQLAlchemy loads only when a bake builds

    started = time.monotonic()
    timed = Timed(context)
    overlay = overlay_of(context)
    make_dirs(context.build_dir)  # the caller owns it (kiln.locks)
    with BuildFolder(context, overlay) as folder:
        root = timed(prepare_root, context, overlay)
        installed = timed(install_packages, context)
        timed(run_steps, context)
        timed(enable_services, context)
        checks = timed(seal_root, context)
        record = timed(record_packages, context, root.debs | installed.debs, installed.unpacked)
        timed(close_root, context, overlay, root.mount_points)
        # From the first byte of the new layer until its tag is written, the blobs and the
        # unpacked layer are referenced by nothing yet: keep kiln gc's sweep out meanwhile.
        with store_in_use(context.home):
            layer = timed(capture_layer, context)
            built = Built(record.packages, record.distro, checks, root.special)
            seconds = time.monotonic() - started
            result = timed(commit, context, built, layer.descriptor, layer.diff_id, seconds)
        folder.success = True
    result.stages = timed.times
    result.seconds = time.monotonic() - started
    return result


def resolve_root(context: BuildContext) -> list[Deb]:
    """Bake as far as the package record, then throw the root away (kiln lock): what the
    recipe's packages resolve to in a real root."""
    timed = Timed(context)
    overlay = overlay_of(context)
    make_dirs(context.build_dir)  # the caller owns it (kiln.locks)
    with BuildFolder(context, overlay) as folder:
        root = timed(prepare_root, context, overlay)
        installed = timed(install_packages, context)
        timed(run_steps, context)
        record = timed(record_packages, context, root.debs | installed.debs, installed.unpacked)
        timed(close_root, context, overlay, root.mount_points)
        folder.success = True
    return record.packages


class Timed:
    """Runs a stage between a line that says it starts and one that gives its time."""

    def __init__(self, context: BuildContext) -> None:
        self.context = context
        self.times: dict[str, float] = {}

    def __call__(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        name = function.__name__
        title = name.replace("_", " ")
        begin = time.monotonic()
        self.context.log(f"{title}{ONGOING}")
        with proc.prefixed(f"{self.context.recipe.name} {title} | "):
            out = function(*args, **kwargs)
        self.times[name] = time.monotonic() - begin
        self.context.log(f"{title}  {self.times[name]:.2f}s")
        return out


class BuildFolder:
    """Unmount and remove the build folder at the end; on failure keep it if asked to."""

    def __init__(self, context: BuildContext, overlay: Overlay | None) -> None:
        self.context = context
        self.overlay = overlay
        self.success = False

    def __enter__(self) -> BuildFolder:
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
            if self.overlay is not None:
                self.overlay.unmount()
            remove_tree(context.build_dir)
        except KilnError as cleanup:
            if exc is None:
                raise
            # the bake's own error matters more; say what was left behind
            context.log(f"could not clean up {context.build_dir}: {cleanup.message}")
