"""Helpers shared by the benchmarks: timing commands, a fresh KILN_HOME, reporting."""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kiln.catalog.ledger import sqlite_time

REPO = Path(__file__).resolve().parents[1]
# Every bench times kiln as an installed kiln runs: from compiled bytecode. A source tree's
# __pycache__ goes stale as files change, and with PYTHONDONTWRITEBYTECODE set each run would
# compile those modules again (tens of ms that say nothing of what is measured). The
# benches' processes and their children share a bytecode cache of their own instead.
PYCACHE = Path("/var/tmp") / f"kiln-bench-pycache-{os.getuid()}"
os.environ.update(PYTHONPYCACHEPREFIX=str(PYCACHE), PYTHONDONTWRITEBYTECODE="")
EXAMPLES = REPO / "examples"
KILN = [sys.executable, "-m", "kiln.cli.main"]
INSERT_IMAGES = (
    "INSERT INTO images (id, name, version, digest, config_digest, parent_id, cache_key,"
    " recipe_path, recipe_digest, origin, created, status, size, seconds)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def stamp(moment: datetime) -> str:
    """A time as SQLAlchemy keeps it in SQLite, for rows a benchmark writes itself."""
    return sqlite_time(moment)


def insert_images(db: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> None:
    """Image rows of a synthetic catalog, each a tuple in the images table's column order."""
    db.executemany(INSERT_IMAGES, rows)


def kiln(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kiln on KILN_HOME ``home``, output captured; a failure stops the bench."""
    env = {**os.environ, "KILN_HOME": str(home)}
    done = subprocess.run([*KILN, *args], env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed:\n{done.stderr}")
    return done


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall-clock seconds of one run of argv (output discarded; failure raises)."""
    start = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{tail}")
    return seconds


def best_of(runs: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(runs)]


@dataclass
class Row:
    name: str
    kiln: float
    peer: float
    peer_name: str
    unit: str
    target: str
    ok: bool

    def render(self) -> str:
        ratio = self.kiln / self.peer if self.peer else float("nan")
        state = "ok" if self.ok else "MISSED"
        return (
            f"{self.name:<34} kiln {self.kiln:9.3f} {self.unit:<5} "
            f"{self.peer_name} {self.peer:9.3f} {self.unit:<5} ratio {ratio:5.2f}  "
            f"target {self.target:<10} {state}"
        )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(rows: Sequence[Row], as_json: bool) -> None:
    """Print the rows, as JSON or one line each."""
    import json

    if as_json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        for row in rows:
            print(row.render())
