"""The propagation plan on synthetic catalog rows: who is out of date, in which wave, why."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from kiln.app.propagation_plan import Parents
from kiln.catalog.lookup import Lookup
from kiln.lifecycle.propagation import Plan, Row, plan
from kiln.recipe.pin import moved_pin


class Rows:
    """A tiny catalog: each ``add`` is the next image id."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.versions: dict[str, int] = {}

    def add(self, name: str, parent: Row | None = None, status: str = "ok") -> Row:
        version = self.versions.get(name, 0) + 1
        self.versions[name] = version
        row = Row(
            len(self.rows) + 1,
            name,
            version,
            parent.id if parent else None,
            f"sha256:{len(self.rows) + 1:064x}",
            f"/recipes/{name}.toml",
            status,
        )
        self.rows.append(row)
        return row


def lineage() -> tuple[Rows, Row]:
    """base:1 -> web:1 -> shop:1, base:1 -> api:1; then base:2 is baked (the origin)."""
    rows = Rows()
    base1 = rows.add("base")
    web1 = rows.add("web", base1)
    rows.add("shop", web1)
    rows.add("api", base1)
    rows.add("tool")  # not built on base at all
    return rows, rows.add("base")


def names(found: Plan) -> list[tuple[int, str]]:
    return [(item.wave, item.name) for item in found.items]


def test_children_come_in_wave_one_and_grandchildren_after_their_parents() -> None:
    rows, origin = lineage()
    found = plan(rows.rows, origin, named={})
    assert names(found) == [(1, "api"), (1, "web"), (2, "shop")]
    assert [item.position for item in found.items] == [1, 2, 3]
    web = found.items[1]
    assert web.reason == "base changed: base:1 -> base:2"
    assert web.parent == "base" and web.after is None and web.current == "web:1"
    shop = found.items[2]
    assert shop.reason == "its parent web is in wave 1" and shop.after == "web"
    assert shop.recipe == "/recipes/shop.toml"


def test_images_already_on_the_origin_are_up_to_date() -> None:
    rows, origin = lineage()
    web1 = next(r for r in rows.rows if r.ref == "web:1")
    web2 = rows.add("web", origin)  # web was rebaked on base:2 already
    shop = plan(rows.rows, origin, named={}).items
    assert [item.name for item in shop] == ["api", "shop"]
    # shop:1 is still on web:1, an earlier web on base:1: it comes in wave 1, saying why
    assert shop[1].wave == 1 and shop[1].after is None
    assert shop[1].reason == "base changed: base:1 -> base:2 (it is built on web:1, an earlier web)"
    assert web1.id != web2.id


def test_an_unfinished_bake_is_not_the_newest_version() -> None:
    rows, origin = lineage()
    rows.add("web", origin, status="pending")
    assert [item.name for item in plan(rows.rows, origin, named={}).items] == [
        "api",
        "web",
        "shop",
    ]


def test_pinned_parents_are_left_alone_with_their_descendants() -> None:
    rows, origin = lineage()
    named = {"web": "base:1", "api": "base@sha256:" + "a" * 64, "shop": "web"}
    found = plan(rows.rows, origin, named=named)
    pins = {item.name: item.pin for item in found.items}
    assert pins["web"].startswith("its recipe pins its parent by version: base:1")
    assert pins["api"].startswith("its recipe pins its parent by digest")
    assert pins["shop"] == "its parent web is left alone"
    assert all(item.pinned for item in found.items)
    assert found.to_json()["planned"] == 0 and found.to_json()["pinned"] == 3
    included = plan(rows.rows, origin, named=named, include_pinned=True)
    assert not any(item.pinned for item in included.items)


def test_a_recipe_path_or_a_name_follows_the_change() -> None:
    rows, origin = lineage()
    found = plan(rows.rows, origin, named={"web": "../base.toml", "api": "base:latest"})
    assert not any(item.pinned for item in found.items)


def test_a_channel_follows_only_when_it_holds_the_change() -> None:
    rows, origin = lineage()
    base1 = rows.rows[0]
    named = {"web": "base:prod", "shop": "web:staging"}
    held = plan(rows.rows, origin, named=named, heads={("base", "prod"): base1.id})
    web, shop = held.items[1], held.items[2]
    assert web.pinned and "promote the new base to prod first" in web.pin
    assert shop.pinned and shop.pin == "its parent web is left alone"
    moved = plan(rows.rows, origin, named=named, heads={("base", "prod"): origin.id}, to="staging")
    assert not any(item.pinned for item in moved.items)
    other = plan(rows.rows, origin, named=named, heads={("base", "prod"): origin.id}, to="prod")
    assert other.items[2].pinned and "to prod, not staging" in other.items[2].pin


def test_a_gone_recipe_is_reported_and_the_rest_planned() -> None:
    rows, origin = lineage()
    found = plan(rows.rows, origin, named={}, exists=lambda path: not path.endswith("web.toml"))
    problems = {item.name: item.problem for item in found.items}
    assert problems == {"api": "", "web": "its recipe is gone: /recipes/web.toml", "shop": ""}
    renamed = plan(rows.rows, origin, named={}, recipes={"web": "/r/x.toml", "api": "/r/x.toml"})
    assert renamed.items[1].problem == "its recipe /r/x.toml is api's too: one was renamed"
    folder = plan(rows.rows, origin, named={}, recipes={"web": "/elsewhere/web.toml"})
    assert folder.items[1].recipe == "/elsewhere/web.toml"
    assert folder.items[0].problem == "no recipe of api in the recipes folder"


def test_an_older_origin_does_not_reach_images_on_a_newer_version() -> None:
    rows, origin = lineage()
    rows.add("api", origin)
    rows.add("base")  # base:3: the origin base:2 is not the newest
    assert [item.name for item in plan(rows.rows, origin, named={}).items] == ["web", "shop"]


def test_a_long_chain_and_a_wide_fan() -> None:
    rows = Rows()
    base = rows.add("base")
    above = base
    for depth in range(3000):  # no recursion limit in the way
        above = rows.add(f"c{depth:04d}", above)
    for fan in range(2000):
        rows.add(f"f{fan:04d}", base)
    origin = rows.add("base")
    found = plan(rows.rows, origin, named={})
    assert len(found.items) == 5000
    assert found.items[-1].name == "c2999" and found.items[-1].wave == 3000
    assert sum(1 for item in found.items if item.wave == 1) == 2001
    position = {item.name: item.position for item in found.items}
    assert all(
        position[item.after] < item.position for item in found.items if item.after is not None
    )


def test_ten_thousand_images_of_depth_six_plan_in_well_under_a_second() -> None:
    rows = Rows()
    level = [rows.add("base")]
    per_level = 10_000 // 6
    for depth in range(1, 7):
        parents = level
        level = [rows.add(f"d{depth}-{n}", parents[n % len(parents)]) for n in range(per_level)]
    origin = rows.add("base")
    start = time.perf_counter()
    found = plan(rows.rows, origin, named={})
    assert time.perf_counter() - start < 0.5
    assert len(found.items) == 6 * per_level and max(i.wave for i in found.items) == 6


def test_the_parent_a_recipe_names_is_the_recorded_one_until_the_recipe_changes(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "web.toml"
    baked_text = '[image]\nname = "web"\nparent = "base:1"\n'
    recipe.write_text(baked_text)
    row = Row(2, "web", 1, 1, "sha256:" + "2" * 64, str(recipe), "ok",
              hashlib.sha256(baked_text.encode()).hexdigest())  # fmt: skip
    events = [("web", 1, json.dumps({"parent_named": "base:1"})), ("web", 0, "not json")]
    lookup = Lookup(lambda _sql, _params: events)
    assert Parents(lookup, {"web": row})["web"] == "base:1"  # as the bake recorded it
    recipe.write_text('[image]\nname = "web"\nparent = "base"   # follows now\n')
    assert Parents(lookup, {"web": row})["web"] == "base"  # edited since: read from the file
    recipe.write_text("[image\n")
    assert Parents(lookup, {"web": row})["web"] is None  # its bake will say what is wrong
    recipe.unlink()
    os.mkfifo(recipe)
    assert Parents(lookup, {"web": row})["web"] == "base:1"  # not read, not waited on


def test_a_pin_moves_alone_or_not_at_all() -> None:
    text = '# web\n[image]\nname = "web"\nparent = "base:3"   # pinned: see ops\n\n[tests]\n'
    moved = moved_pin(text, 4, "base:3", "base:4")
    assert moved == text.replace("base:3", "base:4")
    single = text.replace('"base:3"', "'base:3'")
    assert moved_pin(single, 4, "base:3", "base:4") == single.replace("base:3", "base:4")
    assert moved_pin(text, 2, "base:3", "base:4") is None  # not on that line
    twice = text.replace("# pinned: see ops", '# "base:3"')
    assert moved_pin(twice, 4, "base:3", "base:4") is None  # which one?
    escaped = '[image]\nname = "web"\nparent = "base\\u003a3"\n'
    assert moved_pin(escaped, 3, "base:3", "base:4") is None  # not written plainly
    triple = '[image]\nname = "web"\nparent = """base:3"""\n'  # checked: only the pin moved
    assert moved_pin(triple, 3, "base:3", "base:4") == triple.replace("base:3", "base:4")
    other = '[image]\nname = "web"\nparent = "base:3"\ndescription = "base:3"\n'
    assert moved_pin(other, 3, "base:3", "base:4") == other.replace("base:3", "base:4", 1)


def test_a_recipes_parent_is_read_as_the_loader_reads_it(tmp_path: Path) -> None:
    from kiln.recipe.limits import MAX_RECIPE_BYTES
    from kiln.recipe.text import named_parent, recipe_bytes

    recipe = tmp_path / "web.toml"
    recipe.write_text('[image]\nname = "web"\nparent = "base:2"\n')
    data = recipe_bytes(recipe)
    assert data is not None and named_parent(recipe, data) == "base:2"
    assert named_parent(recipe, b"[image]\nparent = 3\n") is None  # not a ref: its bake says
    assert named_parent(recipe, b"x = " + b"9" * 5000 + b"\n") is None  # too long to read
    assert named_parent(recipe, b"\xff") is None
    recipe.write_bytes(b"#" * (MAX_RECIPE_BYTES + 1))
    assert recipe_bytes(recipe) is None  # larger than any recipe may be
    assert recipe_bytes(tmp_path / "gone.toml") is None
