"""Many kiln processes on one KILN_HOME at once: bakes of one recipe and of different
recipes, gc and fsck beside them; on SQLite and on PostgreSQL.

Identical bakes end with one version (the others wait on the cache key's lock and get a
hit); different recipes bake side by side (their run steps sleep, and the whole takes
far less than the sleeps added up); nothing fails, nothing prints a traceback, fsck is
clean with nothing unreferenced afterwards.
"""

from __future__ import annotations

from pathlib import Path

from bench.postgres import Postgres
from bench.soak import Home, at_once, leftover_entries, leftover_mounts, recipes
from tests.integration.conftest import Kiln

BAKES = 4
SLEEP = 3


def assert_clean(home: Home) -> None:
    report = home.json("fsck")
    assert report["ok"] and report["faults"] == [], report
    assert report["notes"] == [], "nothing unreferenced, nothing left over"
    assert leftover_entries(home.root) == [] and leftover_mounts(home.root) == []


def same_recipe(home: Home, folder: Path) -> None:
    """BAKES bakes of tiny at once into a home that does not exist yet (so the catalog is
    created by all of them at once, too)."""
    run = at_once(home, [("bake", "--json", str(folder / "tiny.toml"))] * BAKES)
    assert run.errors == []
    outputs = run.outputs()
    assert {(o["name"], o["version"]) for o in outputs} == {("tiny", 1)}
    assert sorted(o["cached"] for o in outputs) == [False] + [True] * (BAKES - 1)
    assert [i["ref"] for i in home.json("images")] == ["tiny:1"]
    assert_clean(home)


def different_recipes(home: Home, folder: Path) -> None:
    """BAKES children of tiny at once, each with a run step that sleeps SLEEP s."""
    names = [f"side{number}" for number in range(BAKES)]
    recipes(folder, names, sleep=SLEEP)
    run = at_once(home, [("bake", "--json", str(folder / f"{name}.toml")) for name in names])
    assert run.errors == []
    assert sorted(o["ref"] for o in run.outputs()) == [f"{name}:1" for name in names]
    # one after another the sleeps alone would take BAKES * SLEEP s
    assert run.seconds < BAKES * SLEEP * 0.75, f"bakes did not overlap: {run.seconds:.1f}s"
    refs = sorted(i["ref"] for i in home.json("images"))
    assert refs == sorted(["tiny:1", *(f"{name}:1" for name in names)])
    assert_clean(home)


def one_name(home: Home, folder: Path) -> None:
    """BAKES different recipes of one image name at once: each takes its own version,
    none twice, none skipped (on PostgreSQL the later ones retry on the unique clash)."""
    for number in range(BAKES):
        text = (folder / "side0.toml").read_text().replace('"side0"', '"multi"')
        (folder / f"multi{number}.toml").write_text(
            text + f'\n[[steps]]\nrun = "echo {number} > /n"\n'
        )
    run = at_once(home, [("bake", "--json", str(folder / f"multi{n}.toml")) for n in range(BAKES)])
    assert run.errors == []
    assert sorted(o["version"] for o in run.outputs()) == list(range(1, BAKES + 1))
    assert len({o["digest"] for o in run.outputs()}) == BAKES
    assert_clean(home)


def test_concurrent_bakes_on_sqlite(fresh: Kiln, tmp_path: Path) -> None:
    folder = recipes(tmp_path / "recipes")
    home = Home(fresh.home)
    same_recipe(home, folder)
    different_recipes(home, folder)
    one_name(home, folder)


def test_gc_while_bakes_run_never_breaks_them(fresh: Kiln, tmp_path: Path) -> None:
    """gc and fsck in a loop beside a first bake (package fetch, capture, commit) and a
    child bake with a slow run step."""
    folder = recipes(tmp_path / "recipes", sleep=2)
    home = Home(fresh.home)
    for recipe in ("tiny.toml", "child.toml"):
        bake = home.start("bake", "--json", str(folder / recipe))
        gcs = 0
        while bake.poll() is None:
            for command in ("gc", "fsck"):
                result = home.run(command, "--json")
                assert result.returncode == 0, result.stdout + result.stderr
                assert "Traceback" not in result.stderr
            gcs += 1
        _out, err = bake.communicate()
        assert bake.returncode == 0, err
        assert "Traceback" not in err
        assert gcs >= 1
    assert sorted(i["ref"] for i in home.json("images")) == ["child:1", "tiny:1"]
    assert_clean(home)


def test_concurrent_bakes_on_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.database()
    folder = recipes(tmp_path / "recipes")
    home = Home(tmp_path / "home", {"KILN_CATALOG_URL": url})
    same_recipe(home, folder)
    different_recipes(home, folder)
    one_name(home, folder)
    assert not (home.root / "catalog.db").exists(), "the SQLite default was not used"
