"""SIGKILL at random moments of a bake, then kiln gc: nothing a dead kiln left remains.

8 kills (seeded; ``python -m bench.soak`` runs the same scenario with 200) spread over a
bake of ``tiny`` and of a child whose ``run`` step writes files and sleeps; the kiln
process alone is killed, as a crash would, so its nspawn, tar and mounts live on until gc
finds them. After each: gc, then fsck clean (exit 0, no
faults, no notes), no mounts under the home, no process naming it, nothing in builds/ or
tmp/, and ``kiln images`` never lists an unfinished bake. Last, a rebake succeeds.
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import Home, kill_rounds, leftover_entries, leftover_mounts, recipes
from tests.integration.conftest import Kiln

KILLS = 8
SEED = 20261201


def test_kills_leave_nothing_after_gc(fresh: Kiln, tmp_path: Path) -> None:
    folder = recipes(tmp_path / "recipes")
    home = Home(fresh.home)
    stats = kill_rounds(home, folder, KILLS, SEED)
    print(stats.to_json())  # shown with -s
    assert stats.kills == KILLS
    assert stats.problems == []
    assert stats.gc_failures == stats.fsck_faults == stats.leftovers == 0
    assert stats.shown_pending == 0
    assert stats.removed.get("build", 0) >= KILLS // 4, "kills should hit live bakes"
    rebake = fresh.json("bake", "--no-cache", str(folder / "child.toml"))
    assert not rebake["cached"]
    images = fresh.json("images")
    assert rebake["ref"] in {image["ref"] for image in images}
    for name in ("tiny", "child"):
        # no version twice; a bake killed after taking its number leaves a gap, since a
        # number once given is never given again (the catalog's counter only goes up)
        versions = [image["version"] for image in images if image["name"] == name]
        assert len(versions) == len(set(versions)) and min(versions) == 1
    assert rebake["version"] == max(i["version"] for i in images if i["name"] == "child")
    report = fresh.json("fsck")
    assert report["ok"] and report["faults"] == [] and report["notes"] == []
    assert leftover_entries(fresh.home) == [] and leftover_mounts(fresh.home) == []
