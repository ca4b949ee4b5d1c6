"""kiln propagate on a small real lineage on the session's base.

    base -> pbase -> pa (locked)
                  -> pb -> pc -> pd
                        -> pe
                  -> pf (pins pbase's first version)

pbase's run step writes a marker whose text each test changes: that is the base change.
Each test bakes it, then propagates it to staging (whose gate wants a passed kiln test),
and checks what the run recorded against what the catalog holds. The tests run in this
order and share the lineage; together they take about half a minute.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kiln

RECIPES = {
    "pbase": ("base", [], "pbase-marker"),
    "pa": ("pbase", ["test -s /etc/pbase-marker", "test -s /etc/pa"], "pa"),
    "pb": ("pbase.toml", ["test -s /etc/pb"], "pb"),
    "pc": ("pb", ["test -s /etc/pc", "test -s /etc/pb"], "pc"),
    "pd": ("pc", ["test -s /etc/pd"], "pd"),
    "pe": ("pb", [], "pe"),  # no [tests] of its own
}
ORDER = [(1, "pa"), (1, "pb"), (1, "pf"), (2, "pc"), (2, "pe"), (3, "pd")]


def recipe(name: str, mark: str = "one", fail: bool = False) -> str:
    parent, commands, file = RECIPES[name]
    tests = [*commands, "false"] if fail else commands
    text = (
        f'[image]\nname = "{name}"\nparent = "{parent}"\n\n'
        f'[[steps]]\nrun = "echo {mark} > /etc/{file}"\n'
    )
    if tests:
        text += "\n[tests]\ncommands = [" + ", ".join(json.dumps(c) for c in tests) + "]\n"
    return text


@dataclass
class Lineage:
    kiln: Kiln
    folder: Path
    policy: Path

    def write(self, name: str, mark: str = "one", fail: bool = False) -> None:
        (self.folder / f"{name}.toml").write_text(recipe(name, mark, fail))

    def pin(self, parent: str) -> None:
        text = f'[image]\nname = "pf"\nparent = "{parent}"   # pinned\n\n'
        (self.folder / "pf.toml").write_text(text + '[[steps]]\nrun = "echo f > /etc/pf"\n')

    def change_base(self, mark: str) -> dict[str, Any]:
        self.write("pbase", mark)
        baked: dict[str, Any] = self.kiln.json("bake", str(self.folder / "pbase.toml"))
        assert not baked["cached"]
        return baked

    def propagate(self, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.kiln.run(
            "propagate", "pbase", "--to", "staging", "--policy", str(self.policy), *args,
            "--json", check=False,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)

    def parent_digest(self, ref: str) -> str:
        digest: str = self.kiln.json("inspect", ref)["parents"][0]["digest"]
        return digest

    def staging(self, name: str) -> str | None:
        for row in self.kiln.json("channels"):
            if row["name"] == name and row["channel"] == "staging":
                image: str | None = row["image"]
                return image
        return None


@pytest.fixture(scope="module")
def lineage(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> Lineage:
    top = tmp_path_factory.mktemp("propagate")
    folder = top / "recipes"
    folder.mkdir()
    policy = top / "kiln.toml"  # beside, not among, the recipes
    policy.write_text("[channels.staging]\ntests = true\n")
    found = Lineage(baked, folder, policy)
    for name in RECIPES:
        found.write(name)
    [first] = [r for r in baked.json("bake", str(folder)) if r["name"] == "pbase"]
    found.pin(first["ref"])
    baked.run("bake", str(folder / "pf.toml"))
    baked.run("lock", str(folder / "pa.toml"))
    return found


def items(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in data["items"]}


def pick(found: dict[str, dict[str, Any]], *leave: str) -> dict[str, dict[str, Any]]:
    return {name: item for name, item in found.items() if name not in leave}


def test_a_base_change_reaches_every_child_in_order_as_the_plan_said(lineage: Lineage) -> None:
    origin = lineage.change_base("two")
    plan = lineage.kiln.json("propagate", "pbase", "--to", "staging", "--dry-run")
    assert plan["origin"] == origin["ref"]
    assert [(i["wave"], i["name"]) for i in plan["items"]] == ORDER
    planned = items(plan)
    old = planned["pa"]["reason"].split(": ")[1].split(" -> ")[0]
    assert planned["pa"]["reason"] == f"pbase changed: {old} -> {origin['ref']}"
    assert planned["pc"]["reason"] == "its parent pb is in wave 1"
    assert [i["name"] for i in plan["items"] if i["pinned"]] == ["pf"]
    assert planned["pf"]["pin"].startswith("its recipe pins its parent by version: pbase:")

    code, run = lineage.propagate("--parallel", "2")
    assert code == 0 and run["state"] == "done" and not run["continued"]
    done = items(run)
    # the run did what the plan said, in its order and waves
    assert [(i["position"], i["wave"], i["name"]) for i in run["items"]] == [
        (i["position"], i["wave"], i["name"]) for i in plan["items"]
    ]
    assert {i["state"] for i in run["items"] if i["name"] != "pf"} == {"promoted"}
    assert done["pf"]["state"] == "pinned" and done["pf"]["ref"] is None
    # each on its rebuilt parent: the origin for wave 1, the parent's new image after
    for name, item in pick(done, "pf").items():
        parent = origin["digest"] if item["wave"] == 1 else done[item["parent"]]["digest"]
        assert lineage.parent_digest(item["ref"]) == parent, name
        assert lineage.staging(name) == item["ref"]
    # parents finished before their children started
    for item in run["items"]:
        if item["after"]:
            assert done[item["after"]]["detail"]["ended"] <= item["detail"]["started"]
    # --parallel 2: pa and pb were under way at the same time
    pa, pb = done["pa"]["detail"], done["pb"]["detail"]
    assert max(pa["started"], pb["started"]) < min(pa["ended"], pb["ended"])
    # pa's lock named the old pbase: it was rebased, beside the recipe
    rebased = pa["lock_rebased"]
    assert rebased["to"] == origin["digest"] and rebased["from"] != origin["digest"]
    lock = (lineage.folder / "pa.toml.lock").read_text().splitlines()
    assert f"parent {origin['digest']}" in lock
    # pe has no [tests] of its own: it carries pb's (the label is inherited)
    assert done["pe"]["detail"]["steps"]["test"]["commands"] == 1
    history = lineage.kiln.json("history", "pc")
    propagated = [e for e in history if e["kind"] == "propagated"]
    assert propagated[-1]["detail"]["state"] == "promoted"
    assert propagated[-1]["digest"] == done["pc"]["digest"]


def test_failures_stop_the_run_and_a_failed_childs_descendants_are_skipped(
    lineage: Lineage,
) -> None:
    before = {name: lineage.staging(name) for name in RECIPES}
    lineage.write("pa", fail=True)
    lineage.write("pc", fail=True)
    lineage.change_base("three")
    code, run = lineage.propagate("--parallel", "1", "--max-failures", "2")
    assert code == 1 and run["state"] == "failed" and run["stopped"]
    done = items(run)
    states = {name: item["state"] for name, item in done.items()}
    assert states == {
        "pa": "failed",  # failure 1
        "pb": "promoted",
        "pc": "failed",  # failure 2: nothing new starts
        "pe": "planned",  # left for the next run
        "pd": "skipped",  # its parent failed
        "pf": "pinned",
    }
    assert "kiln test of pc:" in done["pc"]["detail"]["error"]
    assert done["pd"]["detail"]["error"] == "its parent pc failed"
    # pc's parent stays rebuilt and promoted; nothing that failed its tests was promoted
    assert lineage.staging("pb") == done["pb"]["ref"] != before["pb"]
    assert lineage.staging("pa") == before["pa"] and lineage.staging("pc") == before["pc"]
    # --parallel 1: one item at a time
    pa, pb = done["pa"]["detail"], done["pb"]["detail"]
    assert pa["ended"] <= pb["started"]


def _states(catalog: Path, propagation: int) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(catalog, timeout=30) as db:
        rows = db.execute(
            "SELECT name, state, ref FROM propagation_items WHERE propagation_id = ?",
            (propagation,),
        ).fetchall()
    return {name: (state, ref) for name, state, ref in rows}


def test_a_killed_run_is_continued_without_redoing_what_was_done(lineage: Lineage) -> None:
    kiln = lineage.kiln
    lineage.write("pa")
    lineage.write("pc")
    catalog = kiln.home / "catalog.db"
    with sqlite3.connect(catalog) as db:
        [(propagation,)] = db.execute(
            "SELECT id FROM propagations WHERE state = 'failed' ORDER BY id DESC LIMIT 1"
        ).fetchall()
    assert _states(catalog, propagation)["pb"][0] == "promoted"
    pb_before = _states(catalog, propagation)["pb"][1]
    argv = kiln.argv(
        "propagate", "pbase", "--to", "staging", "--policy", str(lineage.policy),
        "--parallel", "1",
    )  # fmt: skip
    child = subprocess.Popen(
        argv,
        env=kiln.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _states(catalog, propagation)["pa"][0] != "promoted":
            assert child.poll() is None, "kiln propagate ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        cut = _states(catalog, propagation)
        assert cut["pa"][0] == "promoted" and cut["pb"] == ("promoted", pb_before)
        assert any(state != "promoted" for state, _ref in cut.values())

        code, run = lineage.propagate()
        assert code == 0 and run["continued"] and run["propagation"] == propagation
        done = items(run)
        assert {i["state"] for i in run["items"] if i["name"] != "pf"} == {"promoted"}
        # what was done before the kill was not done again: the same versions
        assert done["pa"]["ref"] == cut["pa"][1] and done["pb"]["ref"] == pb_before
        versions = [i["version"] for i in kiln.json("images") if i["name"] == "pa"]
        assert f"pa:{max(versions)}" == cut["pa"][1]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        for machine in kiln.json("ps"):  # a test machine the kill left behind
            if machine["name"].startswith(("test-pa-", "test-pc-", "test-pd-", "test-pe-")):
                kiln.run("rm", "--force", "--volumes", machine["name"], check=False)
        # and the build the kill cut short (its mounted root); no version goes without a rule
        swept = kiln.json("gc")
        assert swept["removed"]["version"] == 0, swept


def test_include_pinned_moves_the_pin_and_recipes_come_from_a_folder(lineage: Lineage) -> None:
    origin = lineage.change_base("four")
    code, run = lineage.propagate("--include-pinned", "--recipes", str(lineage.folder))
    assert code == 0 and not run["continued"]
    done = items(run)
    assert {i["state"] for i in run["items"]} == {"promoted"}
    assert done["pf"]["detail"]["pin_moved"]["to"] == origin["ref"]
    assert f'parent = "{origin["ref"]}"   # pinned' in (lineage.folder / "pf.toml").read_text()
    assert lineage.parent_digest(done["pf"]["ref"]) == origin["digest"]
    again = lineage.kiln.json("propagate", "pbase", "--to", "staging", "--dry-run")
    assert again["items"] == []  # everything is on the origin now
