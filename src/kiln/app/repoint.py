"""A recipe moved onto its rebuilt parent before ``kiln propagate`` rebakes it: a pin by
version or digest moved to the new parent (``kiln.recipe.pin``), and a lock file rebased
onto the new parent's packages (``kiln.recipe.lockfile.rebase``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import refs
from kiln.app import resolve
from kiln.app.workspace import Workspace
from kiln.catalog import propagations
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.recipe.lockfile import Deb


class Stop(KilnError):
    """An item's step failed: the item is failed with this message."""


def _debs(workspace: Workspace, image_id: int) -> list[Deb]:
    """The packages the catalog recorded of an image, as a lock file lists them."""
    from kiln.recipe.lockfile import Deb

    return [
        Deb(p.name, p.architecture, p.version, p.sha256)
        for p in workspace.lookup.packages(image_id)
    ]


def _parent_for_lock(
    workspace: Workspace, name: str, recipe_path: Path, rebuilt: str
) -> tuple[str, list[Any]]:
    """The digest and packages of the parent this recipe's bake will be on: the one its
    recipe names, or (a name the plan follows) the ``rebuilt`` parent's digest."""
    from kiln.app.bake import parent_of
    from kiln.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if recipe.parent_recipe_path() is None and recipe.recipe.image.parent is not None:
        parent = parent_of(workspace, recipe, None)
        assert parent is not None
        return parent.image.digest, list(parent.packages)
    found = propagations.image_id(workspace.lookup, rebuilt)
    if found is None:
        raise Stop(f"{name}: its new parent {rebuilt} is not in the catalog")
    return rebuilt, _debs(workspace, found)


def rebase_lock(
    workspace: Workspace, name: str, recipe_path: Path, rebuilt: str
) -> dict[str, Any] | None:
    """Move the recipe's lock onto the new parent, when it names another (written
    atomically beside the recipe); None when there is no lock or it fits already."""
    from kiln.recipe import lockfile

    path = lockfile.lock_path(recipe_path)
    if not path.is_file():
        return None
    lock = lockfile.parse(path)
    digest, packages = _parent_for_lock(workspace, name, recipe_path, rebuilt)
    if lock.parent == digest:
        return None
    old: list[Deb] = []
    if lock.parent is not None:
        found = propagations.image_id(workspace.lookup, lock.parent)
        if found is None:
            raise Stop(
                f"{path} names the parent {lock.parent}, which the catalog no longer has: "
                "the packages it inherited cannot be told from its own",
                hint=f"re-resolve it: kiln lock --update {recipe_path}",
            )
        old = _debs(workspace, found)
    new, changes = lockfile.rebase(lock, old, digest, packages)
    lockfile.write(path, new, recipe_path.name)
    return {
        "lock": str(path),
        "from": lock.parent,
        "to": digest,
        "changes": changes.to_json(),
    }


def move_pin(workspace: Workspace, path: Path, pin: str, rebuilt: str | None) -> dict[str, str]:
    """Point a recipe that pins its parent by version or digest at the rebuilt parent
    (``rebuilt``, a ref; None: the newest of the pinned name): only the parent's value
    on its line changes. Empty when the recipe no longer names ``pin``."""
    from kiln.recipe import load_recipe
    from kiln.recipe.pin import move_pin as rewrite

    recipe = load_recipe(path)
    if recipe.recipe.image.parent != pin:
        return {}  # the recipe was changed since the plan: it says what it says
    ref = refs.parse(pin)
    target = resolve.image(workspace, rebuilt if rebuilt is not None else ref.name)
    new = f"{target.name}@{target.digest}" if ref.digest else target.ref
    if not rewrite(path, recipe.lines.line_of(("image", "parent")), pin, new):
        raise Stop(
            f"{path}: its parent {pin} could not be moved to {new} by changing that value "
            "alone (it is not written once, as a plain string on its line)",
            hint=f'write parent = "{new}" yourself, then run kiln propagate again',
        )
    return {"from": pin, "to": new}
