"""bench.scale's worker sections: a spread propagation with one and with two workers, and
how long a deferred job waits for an idle worker.

Both run on a throw-away PostgreSQL cluster (bench.postgres) and registry (bench.registry)
with KILN_HOMEs standing for hosts, as tests/integration/test_two_hosts.py does: host A
takes base from the source home through the registry, bakes ``app`` on it and N children
on app (not timed).

propagate: app changes, then ``kiln propagate app --queue`` is timed until its last item
is done: first with host A's worker alone, then (app changed again) with host B's worker
beside it. Each item is a bake and a kiln test boot of the child. Reported: both times and
their ratio; on 2 cores the cores are the limit, not the number of workers.
latency: ``kiln bake --queue`` of a cached recipe with one idle worker, 10 times: from the
job's ``deferred`` event to its ``started`` event, procrastinate's own timestamps.
Target: median <= 0.5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import KILN, median
from bench.postgres import cluster
from bench.registry import serving

LATENCY_TARGET = 0.5
APP = """\
[image]
name = "app"
parent = "{base}"

[[steps]]
run = "mkdir -p /etc/app && echo {mark} > /etc/app/mark"
"""
CHILD = """\
[image]
name = "{name}"
parent = "app.toml"

[[steps]]
run = "echo {name} > /etc/{name}"

[tests]
commands = ["test -s /etc/{name}"]
"""


@dataclass
class Host:
    home: Path
    url: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILN_HOME": str(self.home), "KILN_CATALOG_URL": self.url}
        done = subprocess.run([*KILN, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"kiln {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    @contextmanager
    def worker(self) -> Iterator[None]:
        env = {**os.environ, "KILN_HOME": str(self.home), "KILN_CATALOG_URL": self.url}
        log = (self.home.parent / f"worker-{self.home.name}.log").open("ab")
        child = subprocess.Popen([*KILN, "worker"], env=env, stdout=log, stderr=log)
        try:
            yield
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            log.close()


def _wait_for_run(host: Host, first: int, items: int, timeout: float = 1800) -> None:
    """Until the propagate job ``first`` is done and ``items`` item jobs after it are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = host.json("jobs")
        mine = [j for j in jobs if j["task"] == "kiln.propagate_item" and j["id"] > first]
        if any(j["state"] == "failed" for j in mine):
            raise SystemExit(f"a propagation item failed: {mine}")
        head = next(j for j in jobs if j["id"] == first)
        if head["state"] == "done" and sum(j["state"] == "done" for j in mine) == items:
            return
        time.sleep(0.5)
    raise SystemExit("the propagation did not finish")


def _host(folder: Path, name: str, url: str, registry: str) -> Host:
    """A host whose policy names the team's registry."""
    host = Host(folder / name, url)
    host.home.mkdir()
    (host.home / "kiln.toml").write_text(
        f'[registry]\nurl = "docker://{registry}/team"\ninsecure = true\n'
        "\n[channels]\nopen = true\n"
    )
    return host


def _setup(source: Path, base: str, folder: Path, url: str, registry: str, n: int) -> Host:
    subprocess.run(
        [*KILN, "push", base, f"docker://{registry}/team/{base.split(':')[0]}", "--insecure"],
        env={**os.environ, "KILN_HOME": str(source)},
        check=True,
        capture_output=True,
    )
    a = _host(folder, "a", url, registry)
    a.run("catalog", "upgrade")
    a.run("pull", base)
    recipes = folder / "recipes"
    recipes.mkdir()
    (recipes / "app.toml").write_text(APP.format(base=base, mark=0))
    for i in range(n):
        (recipes / f"c{i}.toml").write_text(CHILD.format(name=f"c{i}"))
    a.run("bake", str(recipes))
    return a


def _change_app(a: Host, folder: Path, base: str, mark: int) -> None:
    (folder / "recipes" / "app.toml").write_text(APP.format(base=base, mark=mark))
    made = a.json("bake", str(folder / "recipes" / "app.toml"))
    a.run("push", made["ref"])


def _propagate(a: Host, n: int) -> float:
    started = time.monotonic()
    first = a.json("propagate", "app", "--queue")["job"]
    _wait_for_run(a, first, n)
    return time.monotonic() - started


def propagate(source: Path, base: str, scratch: Path, n: int) -> list[str]:
    folder = scratch / "propagate"
    folder.mkdir()
    with cluster() as postgres, serving(folder / "reg") as registry:
        url = postgres.database()
        a = _setup(source, base, folder, url, registry, n)
        b = _host(folder, "b", url, registry)
        _change_app(a, folder, base, 1)
        with a.worker():
            one = _propagate(a, n)
        _change_app(a, folder, base, 2)
        with a.worker(), b.worker():
            two = _propagate(a, n)
        jobs = a.json("jobs")
    homes: dict[str, int] = {}
    for job in jobs:
        if job["task"] == "kiln.propagate_item" and job["state"] == "done":
            homes[job["home"]] = homes.get(job["home"], 0) + 1
    split = ", ".join(f"{Path(h).name}: {c}" for h, c in sorted(homes.items()))
    return [
        f"propagate: {n} children, 1 worker {one:.1f} s, 2 workers {two:.1f} s; "
        f"ratio {one / two:.2f} (items done by host, both runs: {split}; on "
        f"{os.cpu_count()} cores the cores are the limit)"
    ]


def latency(source: Path, base: str, scratch: Path, runs: int = 10) -> list[str]:
    import psycopg

    from kiln.catalog.jobschema import conninfo

    folder = scratch / "latency"
    folder.mkdir()
    recipe = folder / "tiny.toml"
    examples = Path(__file__).resolve().parents[1] / "examples"
    recipe.write_text((examples / "tiny.toml").read_text())
    shutil.copytree(examples / "tiny", folder / "tiny")
    waits: list[float] = []
    with cluster() as postgres:
        url = postgres.database()
        host = Host(folder / "a", url)
        host.run("catalog", "upgrade")
        host.run("bake", str(recipe))  # every job after is a cache hit
        with host.worker():
            time.sleep(2)  # the worker is up and listening
            for _ in range(runs):
                job = host.json("bake", str(recipe), "--queue")["job"]
                waits.append(_started_after(conninfo(url), int(job), psycopg))
    wait = median(waits)
    state = "ok" if wait <= LATENCY_TARGET else "MISSED"
    shown = " ".join(f"{w:.3f}" for w in waits)
    return [
        f"latency: defer to start, median of {runs}: {wait:.3f} s  target <= "
        f"{LATENCY_TARGET} s  {state}  (runs: {shown})"
    ]


def _started_after(dsn: str, job: int, psycopg: Any, timeout: float = 30) -> float:
    """Seconds from job ``job``'s deferred event to its started event."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "SELECT max(at) FILTER (WHERE type = 'started') - "
                "max(at) FILTER (WHERE type = 'deferred') "
                "FROM kiln_jobs.procrastinate_events WHERE job_id = %s",
                (job,),
            ).fetchone()
            if row and row[0] is not None:
                return float(row[0].total_seconds())
            time.sleep(0.1)
    raise SystemExit(f"job {job} did not start")
