"""The bake's plan (kiln.bake.plan): parents before children, whether a parent is named by
its recipe path or by its image's name, each recipe once, and a cycle refused with every
recipe in it at the file:line of its parent."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.plan import parent_recipe, plan
from kiln.errors import RecipeError
from kiln.recipe import RecipeFile


def recipe(folder: Path, file: str, name: str, parent: str = "tiny:1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(f'# {file}\n[image]\nname = "{name}"\nparent = "{parent}"\n')
    return path


def names(recipes: list[RecipeFile]) -> list[str]:
    return [r.path.name for r in recipes]


def test_parents_come_first_whatever_the_order_of_the_files(tmp_path: Path) -> None:
    recipe(tmp_path, "a_child.toml", "child", parent="m_middle.toml")  # by recipe path
    recipe(tmp_path, "m_middle.toml", "middle", parent="root")  # by image name
    recipe(tmp_path, "z_root.toml", "root")
    ordered, named = plan(tmp_path)
    assert names(ordered) == ["z_root.toml", "m_middle.toml", "a_child.toml"]
    assert names(named) == ["a_child.toml", "m_middle.toml", "z_root.toml"]


def test_unrelated_recipes_keep_the_order_of_their_paths(tmp_path: Path) -> None:
    for file in ("c.toml", "a.toml", "b.toml"):
        recipe(tmp_path, file, file.removesuffix(".toml"))
    assert names(plan(tmp_path)[0]) == ["a.toml", "b.toml", "c.toml"]


def test_a_recipe_path_parent_is_pulled_in_from_wherever_it_is(tmp_path: Path) -> None:
    root = recipe(tmp_path / "bases", "root.toml", "root")
    recipe(tmp_path / "bases", "middle.toml", "middle", parent="root.toml")
    child = recipe(tmp_path / "apps", "child.toml", "child", parent="../bases/middle.toml")
    ordered, named = plan(child)
    assert names(ordered) == ["root.toml", "middle.toml", "child.toml"]
    assert names(named) == ["child.toml"], "only the recipe asked for is reported as named"
    assert ordered[0].path == root.resolve()


def test_a_parent_named_by_its_image_is_ordered_among_the_recipes_baked_only(
    tmp_path: Path,
) -> None:
    recipe(tmp_path, "root.toml", "root")
    child = recipe(tmp_path, "child.toml", "child", parent="root")
    # named alone, the child's parent is the catalog's newest root: nothing is pulled in
    assert names(plan(child)[0]) == ["child.toml"]
    # a pinned version names one in the catalog, never the one this bake makes
    recipe(tmp_path, "child.toml", "child", parent="root:1")
    assert names(plan(tmp_path)[0]) == ["child.toml", "root.toml"]


def test_a_name_two_recipes_share_orders_nothing(tmp_path: Path) -> None:
    recipe(tmp_path, "root_a.toml", "root")
    recipe(tmp_path, "root_b.toml", "root")
    recipe(tmp_path, "a_child.toml", "child", parent="root")
    assert names(plan(tmp_path)[0]) == ["a_child.toml", "root_a.toml", "root_b.toml"]


def test_each_recipe_is_planned_once_however_often_it_is_reached(tmp_path: Path) -> None:
    recipe(tmp_path, "root.toml", "root")
    recipe(tmp_path, "one.toml", "one", parent="root.toml")
    recipe(tmp_path, "two.toml", "two", parent="./root.toml")
    recipe(tmp_path, "three.toml", "three", parent="one.toml")
    ordered, named = plan(tmp_path)
    assert sorted(names(ordered)) == sorted(names(named)) == sorted(set(names(ordered)))
    position = {name: index for index, name in enumerate(names(ordered))}
    assert position["root.toml"] < position["one.toml"] < position["three.toml"]
    assert position["root.toml"] < position["two.toml"]


def test_a_cycle_is_refused_with_each_recipe_in_it_at_its_parent_line(tmp_path: Path) -> None:
    recipe(tmp_path, "a.toml", "a", parent="b.toml")
    recipe(tmp_path, "b.toml", "b", parent="a")  # the way back by image name
    for target in (tmp_path, tmp_path / "a.toml"):
        with pytest.raises(RecipeError) as caught:
            plan(target)
        assert caught.value.exit_code == 2
        assert [str(p) for p in caught.value.problems] == [
            f"{tmp_path / 'a.toml'}:4: image.parent: recipes form a cycle: "
            "a.toml -> b.toml -> a.toml",
            f"{tmp_path / 'b.toml'}:4: image.parent: recipes form a cycle: "
            "a.toml -> b.toml -> a.toml",
        ]
        assert caught.value.hint == "an image cannot be its own ancestor"


def test_a_recipe_that_is_its_own_parent_is_a_cycle_of_one(tmp_path: Path) -> None:
    recipe(tmp_path, "self.toml", "self", parent="self.toml")
    with pytest.raises(RecipeError) as caught:
        plan(tmp_path)
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'self.toml'}:4: image.parent: recipes form a cycle: self.toml -> self.toml"
    ]


def test_a_cycle_names_its_members_not_the_recipes_that_lead_into_it(tmp_path: Path) -> None:
    recipe(tmp_path, "a_leaf.toml", "leaf", parent="b_loop.toml")
    recipe(tmp_path, "b_loop.toml", "loop", parent="c_back.toml")
    recipe(tmp_path, "c_back.toml", "back", parent="b_loop.toml")
    with pytest.raises(RecipeError) as caught:
        plan(tmp_path)
    assert [Path(p.file).name for p in caught.value.problems] == ["b_loop.toml", "c_back.toml"]
    assert all(p.line == 4 for p in caught.value.problems)
    assert "b_loop.toml -> c_back.toml -> b_loop.toml" in str(caught.value)
    assert "a_leaf" not in str(caught.value)


def test_the_parent_a_bake_builds_on_is_the_one_baked_earlier_in_the_run(tmp_path: Path) -> None:
    recipe(tmp_path, "root.toml", "root")
    recipe(tmp_path, "by_path.toml", "by-path", parent="root.toml")
    recipe(tmp_path, "by_name.toml", "by-name", parent="root")
    recipe(tmp_path, "pinned.toml", "pinned", parent="root:1")
    found = {r.path.name: r for r in plan(tmp_path)[0]}
    baked = {found["root.toml"].path: "root:7"}
    names_baked = {"root": "root:7"}
    assert parent_recipe(found["by_path.toml"], baked, names_baked) == "root:7"
    assert parent_recipe(found["by_name.toml"], baked, names_baked) == "root:7"
    assert parent_recipe(found["pinned.toml"], baked, names_baked) is None
    assert parent_recipe(found["by_name.toml"], baked, {}) is None
