"""The fleet bench's rollout: a group of six moved to a version whose check never passes.

`kiln up` starts the group on a healthy version of a small child of base; `kiln rollout
--to` the never-healthy one must detect the failure within the group's healthy_deadline and
roll back, never leaving fewer than count - max_unavailable members healthy. A watcher
thread runs each member's check itself (its PID 1 alive, /etc/app/ok there) every 0.2 s,
beside the lowest count kiln records.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import EXAMPLES, kiln
from kiln.machines.folder import Folder, load

ROLL_GROUP = "bench-roll"
ROLL_COUNT = 6
APP_RECIPE = """\
[image]
name = "fleet-app"
parent = "base.toml"

[[steps]]
run = "mkdir -p /etc/app{healthy}"

[runtime.health]
command = "test -f /etc/app/ok"
timeout = "10s"
"""
ROLL_POLICY = """\
[groups.{group}]
image = "{image}"
count = {count}
volumes = false

[groups.{group}.update]
max_unavailable = 1
max_surge = 1
min_healthy_time = "1s"
healthy_deadline = "8s"
on_failure = "rollback"
"""


class Watcher(threading.Thread):
    """Runs each member's check (its PID 1 alive and /etc/app/ok there) every 0.2 s."""

    def __init__(self, home: Path) -> None:
        super().__init__(daemon=True)
        self.home, self.lowest, self.samples = home, ROLL_COUNT, 0
        self.done = threading.Event()

    def healthy(self) -> int:
        found = 0
        machines = self.home / "machines"
        for path in machines.iterdir() if machines.is_dir() else []:
            if not path.name.startswith(ROLL_GROUP + "-"):
                continue
            try:
                pid = load(Folder(path)).leader.pid
            except Exception:  # a member being made or removed
                continue
            argv = ["nsenter", "-t", str(pid), "-m", "--", "test", "-f", "/etc/app/ok"]
            found += subprocess.run(argv, capture_output=True, check=False).returncode == 0
        return found

    def run(self) -> None:
        while not self.done.is_set():
            self.lowest = min(self.lowest, self.healthy())
            self.samples += 1
            self.done.wait(0.2)


def measure_rollout(home: Path, work: Path) -> dict[str, Any]:
    """A group of six on a healthy version, rolled out to one that never passes."""
    if kiln(home, "rollout", "--help", check=False).returncode != 0:
        return {"missing": "kiln rollout missing", "ok": False}
    work.mkdir(parents=True, exist_ok=True)
    (work / "base.toml").write_bytes((EXAMPLES / "base.toml").read_bytes())
    refs = []
    for healthy in (" && touch /etc/app/ok", ""):
        (work / "fleet-app.toml").write_text(APP_RECIPE.format(healthy=healthy))
        made = json.loads(kiln(home, "bake", str(work / "fleet-app.toml"), "--json").stdout)
        listed = made if isinstance(made, list) else [made]
        refs.append(
            "fleet-app:" + str(next(r for r in listed if r["name"] == "fleet-app")["version"])
        )
    policy = work / "policy.toml"
    policy.write_text(ROLL_POLICY.format(group=ROLL_GROUP, image=refs[0], count=ROLL_COUNT))
    kiln(home, "up", ROLL_GROUP, "--policy", str(policy))
    watcher = Watcher(home)
    watcher.start()
    begin = time.perf_counter()
    done = kiln(home, "rollout", ROLL_GROUP, "--to", refs[1], "--policy", str(policy), "--json",
                check=False)  # fmt: skip
    seconds = time.perf_counter() - begin
    watcher.done.set()
    watcher.join()
    rollout = parsed(done.stdout).get("rollout") or {}
    steps = rollout.get("steps") or []
    failed = next((s for s in steps if s.get("state") == "failed"), None)
    detected = (
        f"{_at(failed['updated']) - _at(rollout['created']):.0f} s after its start"
        if failed and rollout.get("created")
        else "not recorded"
    )
    state = rollout.get("state", f"exit {done.returncode}: {done.stderr.strip()[-200:]}")
    return {
        "count": ROLL_COUNT,
        "max_unavailable": 1,
        "from": refs[0],
        "to": refs[1],
        "state": state,
        "seconds": seconds,
        "detected": detected,
        "lowest_seen": watcher.lowest,
        "samples": watcher.samples,
        "lowest_kiln": rollout.get("lowest_healthy"),
        "ok": state == "rolled-back" and watcher.lowest >= ROLL_COUNT - 1,
    }


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def parsed(text: str) -> dict[str, Any]:
    """A JSON object printed by a process, or {} for anything else."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
