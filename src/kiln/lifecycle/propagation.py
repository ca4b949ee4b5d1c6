"""Which images a changed image reaches, in which order, and why: the propagation plan.

The origin is an image that was just baked (``base`` after a base change: its newest
version). Every other name whose newest version descends from an earlier version of the
origin's name is out of date; so is, recursively, every name built on one of those. The
plan lists them in waves: wave 1 the images built on the origin's name (or on a name that
is up to date itself but whose newest version an out-of-date image still uses), wave 2
the images built on wave 1, and so on; parents always come before their children.

A recipe decides where its parent comes from. A name, a recipe path, or a channel the
rebuilt parent will be in follows the change. A version (``base:2``) or a digest
(``base@sha256:...``) pins it: such a name is reported as pinned and left alone with
everything built on it, unless the caller includes pinned names (then the pin is moved to
the rebuilt parent). A channel that holds an image the change has not reached holds the
name back the same way, until the new parent is promoted to it.

Everything here is pure and works on plain rows (the catalog's plain-SQL lookup gives
them): a plan over 10,000 images takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln import refs

OK = "ok"  # an image row whose bake finished


@dataclass(frozen=True)
class Row:
    """An image as the plan needs it."""

    id: int
    name: str
    version: int
    parent_id: int | None
    digest: str
    recipe_path: str
    status: str = OK
    recipe_digest: str = ""  # sha256 of the recipe file it was baked from

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Item:
    """One name of the plan: rebake ``recipe`` on the rebuilt ``parent``."""

    position: int  # 1, 2, ...: the plan's order
    wave: int
    name: str
    current: str  # the newest version now, e.g. web:4
    recipe: str
    parent: str  # the parent's name
    after: str | None  # the name of the plan item it waits for (None: the origin's wave)
    reason: str
    named: str | None  # the parent as the recipe names it (None: not recorded)
    pinned: bool = False
    pin: str = ""  # why it is left alone ("" when it is not)
    problem: str = ""  # why it cannot be rebaked (a recipe that is gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "wave": self.wave,
            "name": self.name,
            "current": self.current,
            "recipe": self.recipe,
            "parent": self.parent,
            "after": self.after,
            "reason": self.reason,
            "parent_named": self.named,
            "pinned": self.pinned,
            "pin": self.pin,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Plan:
    origin: Row
    items: tuple[Item, ...] = field(default=())

    def waves(self) -> list[list[Item]]:
        out: dict[int, list[Item]] = {}
        for item in self.items:
            out.setdefault(item.wave, []).append(item)
        return [out[wave] for wave in sorted(out)]

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin.ref,
            "origin_digest": self.origin.digest,
            "items": [item.to_json() for item in self.items],
            "planned": sum(1 for item in self.items if not item.pinned and not item.problem),
            "pinned": sum(1 for item in self.items if item.pinned),
            "problems": sum(1 for item in self.items if item.problem),
        }


def newest(rows: Iterable[Row]) -> dict[str, Row]:
    """Each name's newest finished version."""
    out: dict[str, Row] = {}
    for row in rows:
        if row.status != OK:
            continue
        found = out.get(row.name)
        if found is None or row.version > found.version:
            out[row.name] = row
    return out


def _nearest(by_id: Mapping[int, Row], name: str) -> Callable[[int], Row | None]:
    """A function: image id -> its nearest ancestor (itself excluded) named ``name``."""
    memo: dict[int, Row | None] = {}

    def nearest(image_id: int) -> Row | None:
        trail: list[int] = []
        seen: set[int] = set()
        found: Row | None = None
        current = by_id.get(image_id)
        parent_id = current.parent_id if current is not None else None
        while parent_id is not None and parent_id not in seen:
            seen.add(parent_id)
            parent = by_id.get(parent_id)
            if parent is None:
                break
            if parent.name == name:
                found = parent
                break
            if parent_id in memo:
                found = memo[parent_id]
                break
            trail.append(parent_id)
            parent_id = parent.parent_id
        for step in trail:  # each of them has the same nearest ancestor of that name
            memo[step] = found
        memo[image_id] = found
        return found

    return nearest


def pin_of(named: str | None) -> str:
    """'version' or 'digest' when the recipe's parent pins one image, else ''."""
    if named is None or named.endswith(".toml") or not refs.is_ref(named):
        return ""
    ref = refs.parse(named)
    if ref.digest is not None:
        return "digest"
    if ref.version is not None:
        return "version"
    return ""


def channel_of(named: str | None) -> str | None:
    if named is None or named.endswith(".toml") or not refs.is_ref(named):
        return None
    return refs.parse(named).channel


def plan(
    rows: Iterable[Row],
    origin: Row,
    *,
    named: Mapping[str, str | None],
    recipes: Mapping[str, str] | None = None,
    exists: Callable[[str], bool] = lambda _path: True,
    heads: Mapping[tuple[str, str], int] | None = None,
    to: str | None = None,
    include_pinned: bool = False,
) -> Plan:
    """The plan for ``origin``'s change.

    ``named``: each name's parent as its recipe names it (the newest version's bake
    recorded it); ``recipes``: a recipe path per name instead of the catalog's (a folder
    given); ``exists``: whether a recipe file is there; ``heads``: (name, channel) -> the
    image id the channel holds; ``to``: the channel this run promotes each rebuilt image
    to (a child following that channel follows its rebuilt parent).
    """
    rows = list(rows)
    by_id = {row.id: row for row in rows}
    heads = heads or {}
    latest = newest(rows)
    nearest = _nearest(by_id, origin.name)

    def reached(image_id: int) -> bool:
        """The image is the origin or descends from it."""
        if image_id == origin.id:
            return True
        found = nearest(image_id)
        return found is not None and found.id == origin.id

    stale: dict[str, Row] = {}  # name -> the earlier version of the origin's name it uses
    for name, row in latest.items():
        if name == origin.name:
            continue
        found = nearest(row.id)
        if (
            found is not None
            and found.id != origin.id
            and found.version < origin.version
            and found.digest != origin.digest  # the same bytes under an earlier number
        ):
            stale[name] = found

    parent_name: dict[str, str] = {}
    for name in stale:
        parent = by_id.get(latest[name].parent_id or -1)
        parent_name[name] = parent.name if parent is not None else origin.name

    wave: dict[str, int] = {}
    for name in sorted(stale):  # iteratively: a long chain needs no deep recursion
        chain = [name]
        while True:
            above = parent_name[chain[-1]]
            if above not in stale or above in wave or above in chain:
                break
            chain.append(above)
        for step in reversed(chain):
            above = parent_name[step]
            wave[step] = wave[above] + 1 if above in stale and above in wave else 1

    order = sorted(stale, key=lambda name: (wave[name], name))
    items: dict[str, Item] = {}
    makes: dict[str, str] = {}  # recipe -> the first name planned from it
    for position, name in enumerate(order, start=1):
        row = latest[name]
        above = parent_name[name]
        after = above if above in stale else None
        was = stale[name]
        if after is not None:
            reason = f"its parent {after} is in wave {wave[after]}"
        elif above == origin.name:
            reason = f"{origin.name} changed: {was.ref} -> {origin.ref}"
        else:
            through = by_id[row.parent_id].ref if row.parent_id in by_id else above
            reason = (
                f"{origin.name} changed: {was.ref} -> {origin.ref} "
                f"(it is built on {through}, an earlier {above})"
            )
        recipe = (recipes or {}).get(name, row.recipe_path)
        written = named.get(name)
        pin = _held(written, after, above, items, heads, to, include_pinned, reached)
        problem = ""
        if recipes is not None and name not in recipes:
            problem = f"no recipe of {name} in the recipes folder"
        elif not exists(recipe):
            problem = f"its recipe is gone: {recipe}"
        elif recipe in makes:  # a recipe renamed since its bake: it makes one of them now
            problem = f"its recipe {recipe} is {makes[recipe]}'s too: one was renamed"
        makes.setdefault(recipe, name)
        items[name] = Item(
            position=position,
            wave=wave[name],
            name=name,
            current=row.ref,
            recipe=recipe,
            parent=above,
            after=after,
            reason=reason,
            named=written,
            pinned=bool(pin),
            pin=pin,
            problem=problem,
        )
    return Plan(origin, tuple(items.values()))


def _held(
    written: str | None,
    after: str | None,
    above: str,
    items: Mapping[str, Item],
    heads: Mapping[tuple[str, str], int],
    to: str | None,
    include_pinned: bool,
    reached: Callable[[int], bool],
) -> str:
    """Why an item is left alone ('' when it is not): its parent is, it pins its
    parent, or it follows a channel the change has not reached."""
    if after is not None and items[after].pinned:
        return f"its parent {after} is left alone"
    kind = pin_of(written)
    if kind and not include_pinned:
        return f"its recipe pins its parent by {kind}: {written} (--include-pinned moves the pin)"
    channel = channel_of(written)
    if channel is None:
        return ""
    if after is not None:
        if to == channel:
            return ""
        return f"it follows {written}, and this run promotes {after} " + (
            f"to {to}, not {channel}" if to else f"to no channel (--to {channel} would)"
        )
    held = heads.get((above, channel))
    if held is not None and reached(held):
        return ""
    return (
        f"it follows {written}, which does not hold a version built on the change yet: "
        f"promote the new {above} to {channel} first"
    )
