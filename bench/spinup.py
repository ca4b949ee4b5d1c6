"""Spin-up benchmark: time to healthy for web, from its baked image and configured on demand.

    sudo .venv/bin/python -m bench.spinup [--home KILN_HOME] [--runs N] [--on-demand-runs N]

Both sides are whole processes, timed from their start (interpreter and imports included)
until web's health check (GET http://127.0.0.1/ inside the machine) passes.

1. baked: `kiln run web:N --wait` (systemd boots, services start, the check passes).
   The median of N boots (default 5). Target: <= 1.5 s.
2. configure on demand: boot base with the same config and secret, then do at boot what
   web's recipe does: apt-get update and install its packages from the mirror, its steps
   (copy, Ansible, run), then enable and restart its services; until the same check passes.
   The median of N runs (default 3; the stages shown are the median run's).
   Target: baked >= 20x faster, median against median.

A fresh KILN_HOME under /var/tmp (or --home, kept) holds the bake of examples/ (not
timed) and the machines; the bench's machines are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import EXAMPLES, kiln, median
from kiln.home import Home
from kiln.mounts import remove_tree

ON_DEMAND_TARGET = 20.0
BAKED_TARGET = 1.5
CONFIG = ("site_title=Spin-up bench", "api_token=bench-token-not-a-secret")


def configure_on_demand(home: Path, name: str) -> dict[str, float]:
    """Boot base, apply web's recipe to it, wait for web's health check (one process)."""
    from kiln.app import resolve
    from kiln.app.workspace import opened
    from kiln.machines import config, health, launch, provision
    from kiln.machines.contract import from_json
    from kiln.recipe import load_recipe

    started = time.monotonic()
    marks: dict[str, float] = {}
    recipe = load_recipe(EXAMPLES / "web.toml")
    contract = from_json(recipe.recipe.runtime.model_dump(mode="json"))
    values = config.resolve("web", contract, CONFIG)
    kiln_home = Home(home)
    request = launch.Request(
        name, values=values, recipe_folder=recipe.folder, wait=True, throwaway=True
    )
    with opened(kiln_home) as workspace:
        row, image = resolve.image_and_bytes(workspace, "base")
        launched = launch.run(request, image, row.id, kiln_home, started)
        marks["boot base"] = time.monotonic() - started
        state, log = launched.state, lambda _message: None
        provision.install_packages(state, recipe.recipe.packages.apt, log)
        marks["packages"] = time.monotonic() - started
        provision.apply_steps(launched.folder, state, recipe, log)
        marks["steps"] = time.monotonic() - started
        provision.restart_services(state, recipe, log)
        marks["services"] = time.monotonic() - started
    assert contract.health is not None
    result = health.wait_healthy(state, contract.health, launched.folder.console, started)
    if not result.ok:
        raise SystemExit(f"configured on demand, but not healthy: {result.detail}")
    marks["healthy"] = time.monotonic() - started
    return marks


def baked_boot(home: Path, ref: str, name: str) -> float:
    sets = [arg for value in CONFIG for arg in ("--set", value)]
    begin = time.perf_counter()
    kiln(home, "run", ref, "--name", name, *sets, "--wait")
    seconds = time.perf_counter() - begin
    kiln(home, "rm", "--volumes", name)
    return seconds


def on_demand_boot(home: Path, name: str) -> tuple[float, dict[str, float]]:
    begin = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.spinup", "--configure-on-demand", str(home), name],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - begin
    kiln(home, "rm", "--volumes", name)
    if done.returncode != 0:
        raise SystemExit(f"configure on demand failed:\n{done.stdout}\n{done.stderr}")
    marks: dict[str, float] = json.loads(done.stdout)
    return seconds, marks


def measure(home: Path, runs: int, on_demand_runs: int) -> dict[str, Any]:
    baked = kiln(home, "bake", str(EXAMPLES), "--json")
    web = next(r["ref"] for r in json.loads(baked.stdout) if r["name"] == "web")
    baked_boot(home, web, "bench-warm")  # pages the layers in, as a running host has them
    on_demand = sorted(
        (on_demand_boot(home, f"bench-on-demand-{n}") for n in range(on_demand_runs)),
        key=lambda run: run[0],
    )
    on_demand_median = median([seconds for seconds, _ in on_demand])
    marks = on_demand[len(on_demand) // 2][1]
    boots = [baked_boot(home, web, f"bench-{n}") for n in range(runs)]
    baked_median = median(boots)
    speedup = on_demand_median / baked_median
    return {
        "image": web,
        "baked_seconds": boots,
        "baked_median": baked_median,
        "on_demand_seconds": [seconds for seconds, _ in on_demand],
        "on_demand_median": on_demand_median,
        "on_demand_stages": marks,
        "speedup": speedup,
        "ok": speedup >= ON_DEMAND_TARGET and baked_median <= BAKED_TARGET,
    }


def render(data: dict[str, Any]) -> str:
    stages, before = [], 0.0
    for stage, mark in data["on_demand_stages"].items():
        stages.append(f"{stage} {mark - before:.2f}")
        before = mark
    speedup_ok = data["speedup"] >= ON_DEMAND_TARGET
    median_ok = data["baked_median"] <= BAKED_TARGET
    runs = " ".join(f"{s:.3f}" for s in data["baked_seconds"])
    on_demand_runs = " ".join(f"{s:.2f}" for s in data["on_demand_seconds"])
    return "\n".join(
        [
            f"time to healthy, {data['image']} baked, median of {len(data['baked_seconds'])}"
            f"   {data['baked_median']:7.3f} s   target <= {BAKED_TARGET} s   "
            f"{'ok' if median_ok else 'MISSED'}   (runs: {runs})",
            f"time to healthy, web configured on demand, median of "
            f"{len(data['on_demand_seconds'])}   {data['on_demand_median']:7.3f} s"
            f"   (runs: {on_demand_runs}; the median run's seconds: {', '.join(stages)})",
            f"baked vs configure-on-demand                 {data['speedup']:7.1f}x faster"
            f"   target >= {ON_DEMAND_TARGET:.0f}x   {'ok' if speedup_ok else 'MISSED'}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a KILN_HOME to bake examples/ into and keep")
    parser.add_argument("--runs", type=int, default=5, help="baked boots to take the median of")
    parser.add_argument(
        "--on-demand-runs", type=int, default=3, help="configure-on-demand runs (median)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--configure-on-demand", nargs=2, metavar=("HOME", "NAME"), help="internal")
    args = parser.parse_args()
    if args.configure_on_demand:
        given, name = args.configure_on_demand
        print(json.dumps(configure_on_demand(Path(given), name)))
        return
    folder = None if args.home else Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/var/tmp"))
    home = args.home.absolute() if folder is None else folder / "home"
    try:
        data = measure(home, args.runs, args.on_demand_runs)
    finally:
        machines = home / "machines"
        for machine in machines.iterdir() if machines.is_dir() else []:
            if machine.name.startswith("bench-"):
                kiln(home, "rm", "--volumes", machine.name, check=False)
        if folder is not None:
            remove_tree(folder)  # never crosses into a mount that is still there
    print(json.dumps(data, indent=2) if args.json else render(data))
    if not data["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
