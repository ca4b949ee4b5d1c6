"""Fleet benchmark: the four claims for machine images, at fleet scale, in one run.

    sudo .venv/bin/python -m bench.fleet [--home KILN_HOME] [--count N] [--json]

Each side is whole processes, timed from their start until the last one exits (each waits
for web's health check, GET http://127.0.0.1/ inside its machine):

- baked: `kiln up` of a group of N members of web:V (one process that boots its members
  side by side and exits once each has passed its check; median of three bursts per
  condition). The same burst as N parallel `kiln run web:V --wait` processes is reported
  beside it, without a target: there each process pays for its own interpreter, imports
  and catalog;
- configured on demand: N parallel runs of this module's --configure-on-demand, each a
  process that boots base, points its apt at the bench's loopback mirror only, installs
  web's packages (and kiln-fleet-demo) from there, applies web's steps, enables and
  restarts its services and waits for the same check (as bench.spinup does for one).

The on-demand machines keep a loopback-only network of their own rather than the host's
(ten nginx in the host's namespace would share one port 80); their apt, steps and service
commands run in the host's network namespace (kiln's provisioning does, as a bake's do),
which is how the 127.0.0.1 mirror is reachable from inside them. The baked machines get
the network `kiln run` gives them and never talk to a mirror.

1. speed: baked burst <= 3 s; on-demand burst / baked burst >= 30x; one baked machine to
   healthy (the median of five sequential `kiln run --wait`) <= 0.35 s, printed beside the
   floor under it: the same image booted by hand with systemd-nspawn (bench.nspawnpeer).
2. third parties down: the on-demand side's only apt source is a 127.0.0.1 port nothing
   listens on: baked N/N healthy, on demand 0/N.
3. third parties slow: the mirror throttled to 1 MB/s (one token bucket for all
   connections): the baked burst's median within 10% of its median with the mirror at full
   speed; the on-demand burst's time reported.
4. identical siblings: the package sets (`kiln exec M -- dpkg-query -W`) of N baked members
   are one set; in the on-demand burst at full speed, kiln-fleet-demo 2 is published (the
   index regenerated) once half of the members have read the index, and the members show
   two sets.
5. a rollout of a group of 6 (`kiln up`, then `kiln rollout --to` a version whose health
   check never passes, max_unavailable 1): seconds until it has rolled back, and the lowest
   healthy count a watcher saw (each member's check, run every 0.2 s), which must be >=
   count - max_unavailable.

The mirror serves the package cache of KILN_HOME (bench.fleetmirror). A fresh KILN_HOME
under /var/tmp (or --home, kept) holds the bake of examples/ (not timed); the bench's
machines and group are removed at the end. All traffic goes to 127.0.0.1 and the bench's
own machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import fleetmirror, nspawnpeer
from bench.common import EXAMPLES, KILN, REPO, kiln, median
from bench.fleetroll import measure_rollout, parsed
from kiln.home import Home
from kiln.mounts import remove_tree

COUNT = 10
GROUP = "bench"  # the baked burst's group: members bench-1 ... bench-N
BURSTS = 3
SINGLES = 5
CONFIG = ("site_title=Fleet bench", "api_token=bench-token-not-a-secret")
DEMO = "kiln-fleet-demo"
SLOW_RATE = 1_000_000  # bytes a second, the whole mirror
BURST_TARGET = 3.0
RATIO_TARGET = 30.0
SINGLE_TARGET = 0.35
SLOW_TOLERANCE = 0.10
DEADLINE = 900.0  # seconds one on-demand process may take


def configure_on_demand(home: Path, name: str, line: str) -> dict[str, Any]:
    """Boot base, point apt at ``line`` alone, apply web's recipe, wait for health."""
    from kiln.app import resolve
    from kiln.app.workspace import opened
    from kiln.machines import config, enter, health, launch, provision
    from kiln.machines.contract import from_json
    from kiln.recipe import load_recipe

    started = time.monotonic()
    marks: dict[str, Any] = {}
    recipe = load_recipe(EXAMPLES / "web.toml")
    contract = from_json(recipe.recipe.runtime.model_dump(mode="json"))
    values = config.resolve("web", contract, CONFIG)
    request = launch.Request(
        name, values=values, recipe_folder=recipe.folder, wait=True, throwaway=True
    )
    stage = "boot base"
    try:
        with opened(Home(home)) as workspace:
            row, image = resolve.image_and_bytes(workspace, "base")
            launched = launch.run(request, image, row.id, Home(home), started)
            marks[stage] = time.monotonic() - started
            state, log = launched.state, lambda _message: None
            stage = "packages"
            sources = (
                "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.list"
                " /etc/apt/sources.list.d/*.sources"
                f" && echo '{line}' > /etc/apt/sources.list.d/kiln-fleet.list"
            )
            enter.shell(state.leader.pid, sources)
            packages = (*recipe.recipe.packages.apt, DEMO)
            provision.install_packages(state, packages, log)
            marks[stage] = time.monotonic() - started
            stage = "steps"
            provision.apply_steps(launched.folder, state, recipe, log)
            marks[stage] = time.monotonic() - started
            stage = "services"
            provision.restart_services(state, recipe, log)
            marks[stage] = time.monotonic() - started
        stage = "healthy"
        assert contract.health is not None
        result = health.wait_healthy(state, contract.health, launched.folder.console, started)
        if not result.ok:
            raise RuntimeError(result.detail)
    except Exception as exc:  # the bench reports the stage a member failed in
        detail = str(exc).strip().splitlines()
        marks["failed"] = f"{stage}: {detail[-1] if detail else type(exc).__name__}"
        return marks
    marks[stage] = time.monotonic() - started
    return marks


@dataclass
class Burst:
    side: str
    condition: str
    seconds: float  # from the start of the first process until the last one exited
    each: list[float]
    healthy: int
    count: int
    failures: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # the slowest healthy member's


def _burst(side: str, condition: str, argvs: list[list[str]], home: Path) -> Burst:
    env = {**os.environ, "KILN_HOME": str(home)}
    results: list[tuple[float, int, str, str]] = [(0.0, 0, "", "")] * len(argvs)
    begin = time.perf_counter()
    procs = [
        subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]  # fmt: skip

    def wait(index: int) -> None:
        try:
            out, err = procs[index].communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            procs[index].kill()
            out, err = procs[index].communicate()
        results[index] = (time.perf_counter() - begin, procs[index].returncode, out, err)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(argvs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - begin
    burst = Burst(side, condition, seconds, [r[0] for r in results], 0, len(argvs))
    slowest = -1.0
    for took, code, out, err in results:
        data = _json(out)
        failed = data.get("failed") if side == "on demand" else None
        if code == 0 and not failed and (side == "on demand" or _healthy(data)):
            burst.healthy += 1
            if side == "on demand" and took > slowest:
                slowest = took
                burst.stages = {k: round(v, 2) for k, v in data.items()}
        else:
            tail = err.strip().splitlines()
            burst.failures.append(str(failed or (tail[-1] if tail else f"exit {code}")))
    return burst


def _json(text: str) -> dict[str, Any]:
    return parsed(text)


def _healthy(data: dict[str, Any]) -> bool:
    check = data.get("health")
    return isinstance(check, dict) and bool(check.get("ok"))


def names(prefix: str, count: int) -> list[str]:
    return [f"bench-{prefix}-{n}" for n in range(1, count + 1)]


def remove(home: Path, machines: list[str]) -> None:
    kiln(home, "rm", "--force", "--volumes", *machines, check=False)


def group_policy(work: Path, ref: str, count: int) -> Path:
    """The policy file of the baked burst: group GROUP, ``count`` members of ``ref``, the
    same config, and the secret read from a file beside it (never written in the policy)."""
    folder = work / "group"
    folder.mkdir(parents=True, exist_ok=True)
    values = dict(value.split("=", 1) for value in CONFIG)
    token = folder / "api-token"
    token.write_text(values["api_token"])
    token.chmod(0o600)
    policy = folder / "kiln.toml"
    policy.write_text(
        f"[groups.{GROUP}]\n"
        f'image = "{ref}"\n'
        f"count = {count}\n"
        f'config = {{ site_title = "{values["site_title"]}" }}\n'
        f'secrets = {{ api_token = {{ file = "{token.name}" }} }}\n'
        "volumes = false\n"
    )
    return policy


def members(count: int) -> list[str]:
    return [f"{GROUP}-{n}" for n in range(1, count + 1)]


def baked_burst(home: Path, policy: Path, condition: str, count: int, keep: bool = False) -> Burst:
    """One `kiln up` of the group: its seconds, and each member's from its start to its
    first passed check (kiln up --json)."""
    argv = [*KILN, "up", "--policy", str(policy), GROUP, "--json"]
    env = {**os.environ, "KILN_HOME": str(home)}
    begin = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    seconds = time.perf_counter() - begin
    acted = (parsed(done.stdout).get("groups") or [{}])[0]
    started = acted.get("started", [])
    burst = Burst("baked", condition, seconds, [m["seconds"] for m in started], 0, count)
    burst.healthy = sum(1 for m in started if m["healthy"])
    burst.failures = [f"{m['name']}: {m['health']}" for m in started if not m["healthy"]]
    burst.failures += [f"{m['name']}: {m['error']}" for m in acted.get("not_started", [])]
    if done.returncode != 0 and not burst.failures:
        tail = done.stderr.strip().splitlines()
        burst.failures.append(tail[-1] if tail else f"exit {done.returncode}")
    if not keep:
        remove(home, members(count))
    return burst


def parallel_runs(home: Path, ref: str, count: int) -> Burst:
    """The same burst as ``count`` parallel `kiln run --wait` processes."""
    machines = names("baked", count)
    sets = [arg for value in CONFIG for arg in ("--set", value)]
    argvs = [[*KILN, "run", ref, "--name", m, *sets, "--wait", "--json"] for m in machines]
    burst = _burst("baked", "normal", argvs, home)
    remove(home, machines)
    return burst


def on_demand_burst(home: Path, line: str, condition: str, count: int) -> tuple[Burst, list[str]]:
    machines = names("demand", count)
    argvs = [
        [sys.executable, "-m", "bench.fleet", "--configure-on-demand", str(home), m, line]
        for m in machines
    ]
    return _burst("on demand", condition, argvs, home), machines


def package_sets(home: Path, machines: list[str]) -> list[list[str]]:
    """Each machine's dpkg-query -W lines, read inside it (kiln exec)."""
    sets = []
    for machine in machines:
        done = kiln(home, "exec", machine, "--", "dpkg-query", "-W", check=False)
        sets.append(sorted(done.stdout.splitlines()) if done.returncode == 0 else [])
    return sets


def siblings(sets: list[list[str]]) -> dict[str, Any]:
    distinct = {tuple(s) for s in sets if s}
    demo = sorted({line for s in sets for line in s if line.startswith(DEMO + "\t")})
    return {
        "members": len(sets),
        "read": sum(1 for s in sets if s),
        "distinct_sets": len(distinct),
        DEMO: {line.split("\t")[1]: sum(line in s for s in sets) for line in demo},
    }


def single_boots(home: Path, ref: str, runs: int) -> list[float]:
    sets = [arg for value in CONFIG for arg in ("--set", value)]
    boots = []
    for n in range(runs):
        name = f"bench-single-{n}"
        begin = time.perf_counter()
        kiln(home, "run", ref, "--name", name, *sets, "--wait")
        boots.append(time.perf_counter() - begin)
        remove(home, [name])
    return boots


def measure(home: Path, work: Path, count: int) -> dict[str, Any]:
    from tests.integration.aptrepo import build_deb

    baked = json.loads(kiln(home, "bake", str(EXAMPLES), "--json").stdout)
    web = next(r["ref"] for r in baked if r["name"] == "web")
    demo = work / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    mirror = fleetmirror.Mirror(work / "mirror")
    mirror.add([*fleetmirror.cached_debs(home), build_deb(demo, DEMO, "1")])
    mirror.pending = [build_deb(demo, DEMO, "2")]
    down = fleetmirror.refused()
    single_boots(home, web, 1)  # pages the layers in, as a running host has them
    data: dict[str, Any] = {"image": web, "count": count}
    data["single_seconds"] = single_boots(home, web, SINGLES)
    data["by_hand_seconds"] = nspawnpeer.boots(home, web, SINGLES)
    policy = group_policy(work, web, count)
    data["parallel_runs"] = [asdict(parallel_runs(home, web, count)) for _ in range(BURSTS)]
    with fleetmirror.served(mirror) as full, fleetmirror.served(mirror, SLOW_RATE) as slow:
        bursts: dict[str, list[Burst]] = {"normal": [], "down": [], "slow": []}
        for round_ in range(BURSTS):
            for condition in bursts:
                keep = round_ == 0 and condition == "normal"
                bursts[condition].append(baked_burst(home, policy, condition, count, keep))
                if keep:
                    data["baked_siblings"] = siblings(package_sets(home, members(count)))
                    remove(home, members(count))
        mirror.publish_after = (count + 1) // 2
        normal, machines = on_demand_burst(home, full.line, "normal", count)
        published = mirror.published_at
        data["on_demand_siblings"] = siblings(package_sets(home, machines))
        data["on_demand_siblings"]["published"] = published is not None
        remove(home, machines)
        down_burst, machines = on_demand_burst(home, down, "down", count)
        remove(home, machines)
        slow_burst, machines = on_demand_burst(home, slow.line, "slow", count)
        remove(home, machines)
    data["baked"] = {c: [asdict(b) for b in runs] for c, runs in bursts.items()}
    data["on_demand"] = {b.condition: asdict(b) for b in (normal, down_burst, slow_burst)}
    data["rollout"] = measure_rollout(home, work / "rollout")
    return judge(data)


def judge(data: dict[str, Any]) -> dict[str, Any]:
    baked = {c: median([b["seconds"] for b in runs]) for c, runs in data["baked"].items()}
    healthy = {c: min(b["healthy"] for b in runs) for c, runs in data["baked"].items()}
    count = data["count"]
    demand = data["on_demand"]
    ratio = demand["normal"]["seconds"] / baked["normal"]
    slow_change = baked["slow"] / baked["normal"] - 1.0
    single = median(data["single_seconds"])
    roll = data["rollout"]
    data["figures"] = {
        "baked_burst": baked,
        "baked_healthy_least": healthy,
        "parallel_runs": median([b["seconds"] for b in data["parallel_runs"]]),
        "single_median": single,
        "by_hand_median": median(data["by_hand_seconds"]),
        "ratio": ratio,
        "slow_change": slow_change,
    }
    checks = {
        "burst": baked["normal"] <= BURST_TARGET and healthy["normal"] == count,
        "ratio": ratio >= RATIO_TARGET and demand["normal"]["healthy"] == count,
        "single": single <= SINGLE_TARGET,
        "down": healthy["down"] == count and demand["down"]["healthy"] == 0,
        "slow": abs(slow_change) <= SLOW_TOLERANCE and healthy["slow"] == count,
        "baked_siblings": data["baked_siblings"]["distinct_sets"] == 1
        and data["baked_siblings"]["read"] == count,
        "on_demand_siblings": data["on_demand_siblings"]["distinct_sets"] >= 2,
        "rollout": bool(roll.get("ok")),
    }
    data["checks"] = checks
    data["ok"] = all(checks.values())
    return data


def _state(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _runs(runs: list[dict[str, Any]]) -> str:
    return " ".join(f"{b['seconds']:.2f}" for b in runs)


def _stages(stages: dict[str, float]) -> str:
    parts, before = [], 0.0
    for stage, mark in stages.items():
        if isinstance(mark, float | int):
            parts.append(f"{stage} {mark - before:.1f}")
            before = mark
    return ", ".join(parts)


def render(data: dict[str, Any]) -> str:
    f, c, n = data["figures"], data["checks"], data["count"]
    demand, baked = data["on_demand"], data["baked"]
    single_runs = " ".join(f"{s:.3f}" for s in data["single_seconds"])
    lines = [
        f"speed: one {data['image']} to healthy, median of {len(data['single_seconds'])}"
        f"      {f['single_median']:7.3f} s   target <= {SINGLE_TARGET} s   "
        f"{_state(c['single'])}   (runs: {single_runs})",
        f"speed: the same booted by hand with systemd-nspawn, median of "
        f"{len(data['by_hand_seconds'])}   {f['by_hand_median']:7.3f} s   (the floor: kiln takes "
        f"{f['single_median'] / f['by_hand_median']:.2f}x)",
        f"speed: burst of {n} baked to all healthy, median of {len(baked['normal'])}"
        f"   {f['baked_burst']['normal']:7.3f} s   target <= {BURST_TARGET} s   "
        f"{_state(c['burst'])}   (bursts: {_runs(baked['normal'])}; "
        f"healthy {f['baked_healthy_least']['normal']}/{n} in each)",
        f"speed: the same burst as {n} parallel kiln run --wait, median of "
        f"{len(data['parallel_runs'])}   {f['parallel_runs']:7.3f} s   (reported, no target; "
        f"bursts: {_runs(data['parallel_runs'])})",
        f"speed: burst of {n} configured on demand          {demand['normal']['seconds']:7.1f} s"
        f"   healthy {demand['normal']['healthy']}/{n}   (slowest member's seconds: "
        f"{_stages(demand['normal']['stages'])})",
        f"speed: on demand vs baked, burst of {n}          {f['ratio']:7.1f}x  target >= "
        f"{RATIO_TARGET:.0f}x   {_state(c['ratio'])}",
        f"mirror down: baked healthy {f['baked_healthy_least']['down']}/{n} (least of "
        f"{len(baked['down'])} bursts, median {f['baked_burst']['down']:.3f} s), on demand "
        f"healthy {demand['down']['healthy']}/{n} ({demand['down']['seconds']:.1f} s)"
        f"   target {n}/{n} and 0/{n}   {_state(c['down'])}",
        f"mirror down: on demand failed at: {_failures(demand['down']['failures'])}",
        f"mirror at 1 MB/s: baked burst median {f['baked_burst']['slow']:.3f} s vs "
        f"{f['baked_burst']['normal']:.3f} s ({f['slow_change']:+.1%})   target within "
        f"{SLOW_TOLERANCE:.0%}   {_state(c['slow'])}   (bursts: {_runs(baked['slow'])})",
        f"mirror at 1 MB/s: burst of {n} on demand {demand['slow']['seconds']:.1f} s "
        f"(at full speed {demand['normal']['seconds']:.1f} s), healthy "
        f"{demand['slow']['healthy']}/{n}   (slowest member's seconds: "
        f"{_stages(demand['slow']['stages'])})",
    ]
    for side in ("baked", "on_demand"):
        s = data[f"{side}_siblings"]
        versions = ", ".join(f"{v}: {k}" for v, k in s[DEMO].items()) or "not installed"
        target = "1 set" if side == "baked" else ">= 2 sets (v2 published mid-burst)"
        lines.append(
            f"siblings: {side.replace('_', ' ')} package sets of {s['read']}/{s['members']} "
            f"members: {s['distinct_sets']} distinct   ({DEMO} {versions})   target {target}"
            f"   {_state(c[f'{side}_siblings'])}"
        )
    for condition, runs in baked.items():
        failures = [failure for b in runs for failure in b["failures"]]
        if failures:
            lines.append(f"baked failures ({condition}): {_failures(failures)}")
    lines.append(_rollout_line(data["rollout"]))
    return "\n".join(lines)


def _failures(failures: list[str]) -> str:
    counted: dict[str, int] = {}
    for failure in failures:
        counted[failure[:120]] = counted.get(failure[:120], 0) + 1
    return "; ".join(f"{k} (x{v})" for k, v in counted.items()) or "nothing"


def _rollout_line(roll: dict[str, Any]) -> str:
    if "missing" in roll:
        return f"rollout: not measured: {roll['missing']}"
    return (
        f"rollout of {roll['count']} to a never-healthy version: {roll['state']} after "
        f"{roll['seconds']:.1f} s (failure seen {roll['detected']}); lowest healthy seen "
        f"{roll['lowest_seen']} (kiln's own: {roll['lowest_kiln']})   target >= "
        f"{roll['count'] - roll['max_unavailable']} and rolled back   {_state(roll['ok'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a KILN_HOME to bake examples/ into and keep")
    parser.add_argument("--count", type=int, default=COUNT, help="machines in a burst")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--configure-on-demand", nargs=3, metavar=("HOME", "NAME", "LINE"),
                        help="internal")  # fmt: skip
    args = parser.parse_args()
    if args.configure_on_demand:
        given, name, line = args.configure_on_demand
        print(json.dumps(configure_on_demand(Path(given), name, line)))
        return
    folder = Path(tempfile.mkdtemp(prefix="kiln-fleet-", dir="/var/tmp"))
    home = args.home.absolute() if args.home else folder / "home"
    try:
        data = measure(home, folder, args.count)
    finally:
        machines = home / "machines"
        left = [m.name for m in machines.iterdir()] if machines.is_dir() else []
        left = [m for m in left if m.startswith("bench-")]
        if left:
            remove(home, left)
        remove_tree(folder)  # never crosses into a mount that is still there
    print(json.dumps(data, indent=2) if args.json else render(data))
    if not data["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
