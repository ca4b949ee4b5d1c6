"""`kiln lock`: resolve a recipe's packages once, write them down, bake from them after.

Resolution is a real bake that ignores any existing lock and the cache (the image's
package set is what apt and mmdebstrap choose in that root, nothing less will do), but a
throw-away one: its root is removed once its packages are read, and it never becomes an
image or a catalog version. The lock records the parent digest, every package with its
.deb's sha256, and a SOURCE_DATE_EPOCH. The recipe is then baked from its new lock, so the
recipe's name means the locked image and its children lock against the digest `kiln bake`
will reproduce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.bake.options import Options
from kiln.bake.pipeline import Parent, Stores, bake_image, resolve_packages
from kiln.bake.result import BakeResult
from kiln.errors import KilnError, RecipeError
from kiln.recipe import RecipeFile, lockfile
from kiln.recipe.lockfile import Lock, LockDiff


@dataclass
class LockResult:
    recipe: str
    lock: str
    state: str  # created | updated | unchanged | current
    packages: int
    diff: LockDiff | None = None
    baked: list[BakeResult] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "recipe": self.recipe,
            "lock": self.lock,
            "state": self.state,
            "packages": self.packages,
        }
        if self.diff is not None:
            out["diff"] = self.diff.to_json()
        return out


def lock_one(
    stores: Stores,
    recipe: RecipeFile,
    parent: Parent | None,
    update: bool,
    options: Options,
    log: Callable[[str], None],
) -> LockResult:
    """Lock one recipe whose parent (if any) is already resolved, then bake from the lock."""
    path = lockfile.lock_path(recipe.path)
    old: Lock | None = None
    if path.is_file():
        try:
            old = lockfile.parse(path)
        except RecipeError:
            if not update:
                raise
            log(f"{recipe.name}: {path.name} does not parse; resolving it anew")
    if old is not None and not update:
        why = lockfile.stale(
            old, recipe.recipe.packages.apt, parent.image.digest if parent else None
        )
        if why is None:
            # Still fits: bake from it (a cache hit when nothing changed) so the children
            # see the digest their own locks name.
            result = bake_image(stores, recipe, parent, options, log)
            return LockResult(
                str(recipe.path), str(path), "current", len(old.packages), baked=[result]
            )
        log(f"{recipe.name}: {path.name} is stale ({why})")
    log(f"{recipe.name}: resolving against the mirror")
    resolved = resolve_packages(stores, recipe, parent, options, log)
    new = Lock(
        parent=resolved.parent_digest,
        source_date_epoch=int(time.time()),
        packages=tuple(sorted(resolved.packages)),
    )
    unknown = [d.name for d in new.packages if not d.sha256]
    if unknown:
        raise KilnError(
            f"no .deb is known for {unknown}: they cannot be locked",
            hint="packages that came with an imported base are not "
            "lockable; lock a Debian base instead",
        )
    diff = lockfile.diff(old.packages, new.packages) if old is not None else None
    if old is not None and diff is not None and diff.empty() and old.parent == new.parent:
        # the same packages: keep the epoch, so the locked image stays the same, and write
        # the lock again only when apt's automatic marks differ (a lock older than them)
        marks = {(d.name, d.architecture, d.auto) for d in new.packages}
        if marks == {(d.name, d.architecture, d.auto) for d in old.packages}:
            state, new = "unchanged", old
        else:
            state = "updated"
            new = Lock(old.parent, old.source_date_epoch, new.packages)
            lockfile.write(path, new, recipe.path.name)
            log(f"{recipe.name}: {path.name} now records which packages apt marked automatic")
    else:
        state = "updated" if old is not None else "created"
        lockfile.write(path, new, recipe.path.name)
    log(f"{recipe.name}: baking from {path.name}")
    final = bake_image(stores, recipe, parent, options, log)
    return LockResult(str(recipe.path), str(path), state, len(new.packages), diff, baked=[final])
