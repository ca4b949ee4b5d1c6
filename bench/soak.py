"""Soak: kiln under SIGKILL at random moments and under concurrent bakes, at scale.

    python -m bench.soak                    # 200 kills, 8 concurrent bakes
    python -m bench.soak --kills 20 --concurrent 4 --seed 7

Kills: a ``tiny`` bake and a child bake with a ``run`` step, each killed (SIGKILL, the
kiln process only, as a crash would) at a random moment, then ``kiln gc`` and
``kiln fsck``. Counted: fsck faults, leftovers after gc (fsck notes, build folders and
tmp entries, mounts under the home, processes naming the home), failed gc runs. Then a
rebake that must succeed. Concurrency: N bakes of one recipe at once (one version, N-1
cache hits) and N bakes of different recipes at once (N images), errors counted. Last,
the verified-unpack ratio from bench/verify.py.

The helpers here are also what tests/integration/test_crash.py and test_concurrency.py
use, so the test and the soak run the same scenario at different sizes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.mounts import mounts_below

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
KILN = [sys.executable, "-m", "kiln.cli.main"]

CHILD = """[image]
name = "{name}"
parent = "tiny"
description = "a child of tiny whose run step writes files and takes a while"

[[steps]]
run = {run}
"""
WRITE_AND_SLEEP = (
    "mkdir -p /data && i=0 && while [ $i -lt {files} ]; do echo $i > /data/f$i; "
    "i=$((i+1)); done && sleep {sleep}"
)


def recipes(folder: Path, children: Sequence[str] = ("child",), sleep: float = 1.5) -> Path:
    """tiny.toml with its inputs, and one child recipe per name, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "tiny.toml", folder / "tiny.toml")
    shutil.copytree(EXAMPLES / "tiny", folder / "tiny", dirs_exist_ok=True)
    for name in children:
        run = json.dumps(WRITE_AND_SLEEP.format(files=200, sleep=sleep))
        (folder / f"{name}.toml").write_text(CHILD.format(name=name, run=run))
    return folder


@dataclass
class Home:
    """One KILN_HOME, driven through the command line as a user would."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, "KILN_HOME": str(self.root), "COLUMNS": "200"}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KILN, *args], env=self.env(), capture_output=True, text=True, check=False
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        if result.returncode not in (0, 1) or not result.stdout.strip():
            raise RuntimeError(
                f"kiln {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return json.loads(result.stdout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*KILN, *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )


def leftover_mounts(home: Path) -> list[str]:
    """Mount points at or below ``home``, shallowest first."""
    return [str(point) for point in reversed(mounts_below(home))]


def leftover_processes(home: Path) -> list[str]:
    """Processes (other than this one) whose command line names ``home``."""
    needle = str(home.resolve()).encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                argv = handle.read()
        except OSError:
            continue
        if needle in argv:
            words = argv.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {words}")
    return found


def leftover_entries(home: Path) -> list[str]:
    """Entries of builds/ and tmp/ (their creation lock files aside)."""
    out = []
    for sub in ("builds", "tmp"):
        folder = home / sub
        if folder.is_dir():
            out += [str(p) for p in folder.iterdir() if p.name != ".lock"]
    return out


@dataclass
class KillStats:
    kills: int = 0
    finished_before_kill: int = 0
    gc_failures: int = 0
    fsck_faults: int = 0
    leftovers: int = 0
    shown_pending: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    processes_killed: int = 0
    mounts_unmounted: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "finished_before_kill": self.finished_before_kill,
            "gc_failures": self.gc_failures,
            "fsck_faults": self.fsck_faults,
            "leftovers_after_gc": self.leftovers,
            "pending_shown_as_images": self.shown_pending,
            "removed_by_gc": self.removed,
            "processes_killed_by_gc": self.processes_killed,
            "mounts_unmounted_by_gc": self.mounts_unmounted,
        }


def build_started(home: Home, child: subprocess.Popen[str], limit: float = 120.0) -> float:
    """Wait until the bake has an entry in builds/ or tmp/ (or has ended); the seconds
    it took."""
    start = time.monotonic()
    while child.poll() is None and time.monotonic() - start < limit:
        if leftover_entries(home.root):
            break
        time.sleep(0.01)
    return time.monotonic() - start


def kill_once(
    home: Home, recipe: Path, delay: float, stats: KillStats, *, in_build: bool = False
) -> None:
    """Start a bake, SIGKILL the kiln process after ``delay`` s, then gc and fsck.

    With ``in_build`` the kill also waits for the bake's first build or scratch entry, so
    it lands in a live bake however slow the host's start-up is today.
    """
    child = home.start("bake", "--no-cache", str(recipe))
    if in_build:
        delay = max(0.0, delay - build_started(home, child))
    time.sleep(delay)
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    else:
        stats.finished_before_kill += 1
    child.communicate()
    stats.kills += 1
    shown = home.json("images")
    if any(image.get("status") == "pending" for image in shown):
        stats.shown_pending += 1
        stats.problems.append(f"kill {stats.kills}: a pending image is listed by kiln images")
    gc = home.run("gc", "--json")
    if gc.returncode != 0:
        stats.gc_failures += 1
        stats.problems.append(f"kill {stats.kills}: kiln gc exited {gc.returncode}: {gc.stderr}")
    else:
        done = json.loads(gc.stdout)
        for kind, count in done["removed"].items():
            stats.removed[kind] = stats.removed.get(kind, 0) + count
        stats.processes_killed += sum(len(item["processes"]) for item in done["items"])
        stats.mounts_unmounted += sum(len(item["mounts"]) for item in done["items"])
    report = home.json("fsck")
    if report["faults"] or not report["ok"]:
        stats.fsck_faults += len(report["faults"]) or 1
        stats.problems.append(f"kill {stats.kills} after {delay:.2f}s: faults {report['faults']}")
    left = report["notes"] + leftover_entries(home.root)
    left += leftover_mounts(home.root) + leftover_processes(home.root)
    if left:
        stats.leftovers += len(left)
        stats.problems.append(f"kill {stats.kills} after {delay:.2f}s: leftovers {left}")


def timed_bake(home: Home, recipe: Path) -> float:
    start = time.monotonic()
    result = home.run("bake", "--no-cache", str(recipe))
    if result.returncode != 0:
        raise RuntimeError(f"bake of {recipe} failed:\n{result.stderr}")
    return time.monotonic() - start


def kill_rounds(home: Home, folder: Path, kills: int, seed: int) -> KillStats:
    """``kills`` SIGKILLs spread over bakes of tiny and of a child with a run step.

    Each recipe is baked twice first (the first bake also fetches packages and makes the
    catalog); the second one's time bounds the random moments of the kills. Every other
    pair of kills lands after the build folder appears, so half of them hit a live bake
    even when start-up takes most of a bake's time on a loaded host.
    """
    rng = random.Random(seed)
    tiny, child = folder / "tiny.toml", folder / "child.toml"
    durations = {}
    for recipe in (tiny, child):
        timed_bake(home, recipe)
        durations[recipe] = timed_bake(home, recipe)
    stats = KillStats()
    for number in range(kills):
        recipe = tiny if number % 2 == 0 else child
        delay = rng.uniform(0.0, durations[recipe] * 0.95)
        kill_once(home, recipe, delay, stats, in_build=number % 4 >= 2)
    return stats


@dataclass
class Concurrent:
    results: list[subprocess.CompletedProcess[str]]
    seconds: float

    @property
    def errors(self) -> list[str]:
        return [
            f"exit {r.returncode}: {r.stderr[-2000:]}"
            for r in self.results
            if r.returncode != 0 or "Traceback" in r.stderr
        ]

    def outputs(self) -> list[Any]:
        return [json.loads(r.stdout) for r in self.results if r.returncode == 0]


def at_once(home: Home, argvs: Sequence[Sequence[str]]) -> Concurrent:
    """Start every command at once; wait for all."""
    start = time.monotonic()
    children = [home.start(*argv) for argv in argvs]
    results = []
    for argv, child in zip(argvs, children, strict=True):
        out, err = child.communicate()
        results.append(subprocess.CompletedProcess(list(argv), child.returncode, out, err))
    return Concurrent(results, time.monotonic() - start)


def concurrency(home: Home, folder: Path, count: int, sleep: float) -> dict[str, Any]:
    """``count`` bakes of tiny at once in a new home, then ``count`` different children."""
    same = at_once(home, [("bake", "--json", str(folder / "tiny.toml"))] * count)
    versions = {(o["name"], o["version"]) for o in same.outputs()}
    hits = sum(1 for o in same.outputs() if o["cached"])
    names = [f"side{number}" for number in range(count)]
    recipes(folder, names, sleep=sleep)
    different = at_once(home, [("bake", "--json", str(folder / f"{n}.toml")) for n in names])
    report = home.json("fsck")
    return {
        "same_recipe": {
            "bakes": count,
            "errors": len(same.errors),
            "versions": len(versions),
            "cache_hits": hits,
            "seconds": round(same.seconds, 2),
        },
        "different_recipes": {
            "bakes": count,
            "errors": len(different.errors),
            "images": len({o["ref"] for o in different.outputs()}),
            "seconds": round(different.seconds, 2),
            "sleep_per_bake": sleep,
        },
        "fsck_faults": len(report["faults"]),
        "notes_after": len(report["notes"]),
        "error_text": same.errors + different.errors,
    }


def verified_unpack(home: Path | None = None) -> list[str]:
    """Rows from bench/verify.py (the verified-unpack ratio), if it is there."""
    try:  # written separately; may not be there yet
        verify = importlib.import_module("bench.verify")
    except ImportError:
        return ["verified unpack: bench/verify.py is missing, no ratio measured"]
    return [row.render() if hasattr(row, "render") else str(row) for row in verify.rows(home)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=3.0, help="seconds each side bake sleeps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-verify", action="store_true", help="skip bench/verify.py")
    parser.add_argument(
        "--verify-home", type=Path, help="a KILN_HOME with a base image, for bench/verify.py"
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="kiln-soak-"))
    try:
        folder = recipes(base / "recipes")
        home = Home(base / "kill-home")
        started = time.monotonic()
        stats = kill_rounds(home, folder, args.kills, args.seed)
        rebake = home.run("bake", "--no-cache", str(folder / "child.toml"))
        final = home.json("fsck")
        print(f"kills: {stats.kills} in {time.monotonic() - started:.0f}s (seed {args.seed})")
        for key, value in stats.to_json().items():
            print(f"  {key}: {value}")
        print(f"  rebake after the kills: exit {rebake.returncode}")
        print(f"  final fsck: {len(final['faults'])} faults, {len(final['notes'])} notes")
        for problem in stats.problems[:20]:
            print(f"  ! {problem}")
        figures = concurrency(Home(base / "concurrent-home"), folder, args.concurrent, args.sleep)
        same, different = figures["same_recipe"], figures["different_recipes"]
        print(
            f"concurrent bakes of one recipe: {same['bakes']} -> {same['errors']} errors, "
            f"{same['versions']} version(s), {same['cache_hits']} cache hits, {same['seconds']}s"
        )
        print(
            f"concurrent bakes of different recipes: {different['bakes']} -> "
            f"{different['errors']} errors, {different['images']} images, "
            f"{different['seconds']}s (each sleeps {different['sleep_per_bake']}s)"
        )
        print(f"  fsck after: {figures['fsck_faults']} faults, {figures['notes_after']} notes")
        for text in figures["error_text"][:5]:
            print(f"  ! {text}")
        if not args.no_verify:
            for line in verified_unpack(args.verify_home):
                print(line)
    finally:
        for mount in reversed(leftover_mounts(base)):
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
