"""kiln rollout on one group of four real machines (max_unavailable 1, max_surge 1, one
canary, auto_promote): a rollout to a healthy version completes and a second one is a
no-op; a rollout to a version that is never healthy rolls back at once; a rollout whose
process is SIGKILLed mid-way is continued by --resume, touching no member twice. A thread
samples every member's health every 100 ms through kiln's own Python API: healthy
capacity never drops below count - max_unavailable, also during the rollback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kiln.app.fleet import HostDriver
from kiln.app.workspace import Workspace
from kiln.catalog import Catalog, rollouts
from kiln.home import Home
from kiln.lifecycle.policy import load
from tests.integration.conftest import AppImages, Kiln

GROUP = "roll"  # the session's home is shared: a name no other test's machines take
COUNT = 4


def write_policy(path: Path, image: str) -> str:
    path.write_text(
        f'[groups.{GROUP}]\nimage = "{image}"\ncount = {COUNT}\n'
        f"[groups.{GROUP}.update]\n"
        "max_unavailable = 1\nmax_surge = 1\ncanary = 1\nauto_promote = true\n"
        'min_healthy_time = "1s"\nhealthy_deadline = "15s"\nprogress_deadline = "5m"\n'
    )
    return str(path)


@contextmanager
def sampled(home: Path, policy: str) -> Iterator[list[int]]:
    """How many members passed their check, every 100 ms while the block runs."""
    counts: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        workspace = Workspace(Home(home))
        driver = HostDriver(workspace, load(Path(policy)))
        try:
            while not stop.is_set():
                found = driver.members(GROUP)
                counts.append(sum(driver.healthy(m)[0] for m in found))
                stop.wait(0.1)
        finally:
            workspace.close()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=30)


def rollout(kiln: Kiln, policy: str, *args: str) -> tuple[int, dict[str, Any], str]:
    done = kiln.run("rollout", GROUP, *args, "--policy", policy, "--json", check=False)
    data = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, data, done.stderr


def digests(kiln: Kiln) -> list[str]:
    rows = [row for row in kiln.json("ps") if row["name"].startswith(f"{GROUP}-")]
    return sorted(row["digest"] for row in rows if row["state"] == "running")


def test_a_group_rolls_forward_back_and_on_after_a_kill(
    baked: Kiln, app_images: AppImages, machines: list[str], tmp_path: Path
) -> None:
    machines += [f"{GROUP}-{n}" for n in range(1, COUNT + 3)]
    good, good2, bad = (
        app_images.digests[r] for r in (app_images.good, app_images.good2, app_images.bad)
    )
    policy = write_policy(tmp_path / "kiln.toml", app_images.good)
    baked.run("up", GROUP, "--policy", policy)
    assert digests(baked) == [good] * COUNT

    # forward to good2: done, capacity kept, stable; a second run is a no-op
    began = time.monotonic()
    with sampled(baked.home, policy) as counts:
        code, data, err = rollout(baked, policy, "--to", app_images.good2)
    print(f"forward: {time.monotonic() - began:.1f}s, fewest healthy {min(counts)}")
    assert code == 0, err
    assert data["rollout"]["state"] == "done" and data["rollout"]["stable"]
    assert digests(baked) == [good2] * COUNT
    assert counts and min(counts) >= COUNT - 1, counts
    assert data["rollout"]["lowest_healthy"] >= COUNT - 1
    code, again, err = rollout(baked, policy, "--to", app_images.good2)
    assert code == 0 and again["changed"] is False, err

    # to bad: the canary never passes, the rollout rolls back at once, exit 1
    began = time.monotonic()
    with sampled(baked.home, policy) as counts:
        code, data, err = rollout(baked, policy, "--to", app_images.bad)
    took = time.monotonic() - began
    print(f"rolled back: {took:.1f}s, fewest healthy {min(counts)} of {len(counts)} samples")
    assert code == 1 and "rolled-back" in err and "not healthy" in err, err
    assert data["rollout"]["state"] == "rolled-back"
    assert digests(baked) == [good2] * COUNT
    assert min(counts) >= COUNT - 1, counts
    assert took < 15 + 20, took  # the deadline, then the rollback with no wait for more
    status = baked.json("rollout", "status", GROUP, "--policy", policy)
    assert status["stable"] == good2
    assert [s["member"] for s in status["rollout"]["steps"] if s["phase"] == "rollback"]

    # back to good, SIGKILLed while it waits in its second wave, then --resume
    catalog = Catalog(f"sqlite:///{baked.home / 'catalog.db'}")
    started = subprocess.Popen(
        baked.argv("rollout", GROUP, "--to", app_images.good, "--policy", policy),
        env=baked.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = rollouts.unfinished(catalog, GROUP)
            waits = [s for s in (found.steps if found else ()) if s.action == "wait"]
            if len(waits) > 1 and waits[1].state == rollouts.INTENT:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the rollout never reached its second wave")
    finally:
        os.kill(started.pid, signal.SIGKILL)
        started.wait()
    cut = rollouts.unfinished(catalog, GROUP)
    assert cut is not None and cut.state == "running"
    code, _data, err = rollout(baked, policy, "--to", app_images.good2)
    assert code == 2 and f"rollout {cut.id} of {GROUP}" in err, err  # one at a time
    began = time.monotonic()
    code, data, err = rollout(baked, policy, "--resume")
    print(f"resumed: {time.monotonic() - began:.1f}s")
    assert code == 0, err
    assert data["rollout"]["state"] == "done"
    assert digests(baked) == [good] * COUNT
    steps = data["rollout"]["steps"]
    assert all(s["state"] == "done" for s in steps), steps
    for action in ("start", "remove"):
        names = [s["member"] for s in steps if s["action"] == action]
        assert len(names) == len(set(names)), (action, names)  # each touched once
    assert sum(s["action"] == "start" for s in steps) == COUNT
    history = baked.json("rollout", "history", GROUP, "--policy", policy)
    assert [h["state"] for h in history] == ["done", "rolled-back", "done"]
    assert bad not in {h["target"] for h in history if h["stable"]}
    catalog.close()
