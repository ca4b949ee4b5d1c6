"""`kiln propagate --dry-run` on a large lineage: the whole process, against its floor.

    .venv/bin/python -m bench.propagate [--images N] [--runs N] [--json]

A synthetic catalog (SQLite, at the schema's HEAD, filled with direct SQL inserts) of N
images (default 10,000): a root name ``base`` with an old version and a new one (the
change), and N/2 - 1 other names of two versions each in a lineage of depth 6 (each
level's names built on the level above's, the newest versions all still on the old
base), every image with its ``baked`` event naming its parent as a recipe would (one name
in fifty pins a version), and a recipe file per name in a scratch folder (one in ten
edited since its bake, so the plan reads its parent from the file). Each side is a
whole process, the median of N runs:

1. `kiln propagate base --dry-run --json` (every name of the lineage in the plan, waves
   1 to 6) against `kiln --version` (the interpreter and import floor). Target: kiln
   <= 1.0 s absolute; the ratio is shown.
2. `kiln outdated --json --offline` over 1,000 images of 200 packages each with warm
   indexes (bench/freshness.py, which also runs alone). Target: <= 2 s.

``--skip-outdated`` leaves the second out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import KILN, Row, insert_images, median, report, stamp, timed
from kiln.catalog import Catalog

DEPTH = 6
VERSIONS = 2  # per name
PIN_EVERY = 50  # one name in this many pins its parent's version
CHANGED_EVERY = 10  # one recipe in this many was edited since its newest version's bake
TARGET_SECONDS = 1.0


def synthetic(home: Path, recipes: Path, images: int) -> int:
    """Fill a new catalog in ``home``; return how many names the plan should hold."""
    home.mkdir(parents=True, exist_ok=True)
    recipes.mkdir(parents=True, exist_ok=True)
    Catalog(f"sqlite:///{home / 'catalog.db'}").close()  # the schema at HEAD, as kiln makes it
    now = datetime.now(UTC)
    names = images // VERSIONS - 1
    per_level = names // DEPTH
    rows: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    ids: dict[tuple[str, int], int] = {}

    def add(
        name: str, version: int, parent: int | None, named: str | None, recipe: str = "0" * 64
    ) -> None:
        image = len(rows) + 1
        ids[(name, version)] = image
        digest = f"sha256:{image:064x}"
        at = stamp(now - timedelta(minutes=images - image))
        rows.append(
            (image, name, version, digest, digest, parent, f"{image:064x}",
             str(recipes / f"{name}.toml"), recipe, "parent" if parent else "bootstrap",
             at, "ok", 1 << 20, 1.0)
        )  # fmt: skip
        detail = json.dumps({"parent": None, "parent_named": named, "cache_key": f"{image:x}"})
        events.append((at, "baked", name, version, digest, "", "bench", detail))

    add("base", 1, None, None)
    above = ["base"]
    planned = 0
    for level in range(1, DEPTH + 1):
        here = [f"l{level}-{n:05d}" for n in range(per_level)]
        for number, name in enumerate(here):
            parent = above[number % len(above)]
            pinned = number % PIN_EVERY == 0
            named = f"{parent}:1" if pinned else parent
            text = f'[image]\nname = "{name}"\nparent = "{named}"\n'
            (recipes / f"{name}.toml").write_text(text)
            if number % CHANGED_EVERY == 0:  # edited since: its parent is read from the file
                text += "# edited\n"
            digest = hashlib.sha256(text.encode()).hexdigest()
            for version in range(1, VERSIONS + 1):
                add(name, version, ids[(parent, 1 if level == 1 else VERSIONS)], named, digest)
            planned += 1
        above = here
    add("base", 2, None, None)  # the change
    db = sqlite3.connect(home / "catalog.db")
    insert_images(db, rows)
    db.executemany(
        "INSERT INTO events (at, kind, name, version, digest, machine, actor, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row[1])] = max(counts.get(str(row[1]), 0), int(str(row[2])))
    db.executemany("INSERT INTO image_names (name, last_version) VALUES (?, ?)", counts.items())
    db.commit()
    db.close()
    return planned


def bench_plan(images: int, runs: int) -> list[Row]:
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-propagate-", dir="/var/tmp"))
    try:
        home, recipes = scratch / "home", scratch / "recipes"
        planned = synthetic(home, recipes, images)
        env = {"KILN_HOME": str(home), "COLUMNS": "200"}
        argv = [*KILN, "propagate", "base", "--dry-run", "--json"]
        out = subprocess.run(argv, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                             text=True, check=True)  # fmt: skip
        plan = json.loads(out.stdout)
        waves = {item["wave"] for item in plan["items"]}
        assert len(plan["items"]) == planned and waves == set(range(1, DEPTH + 1)), plan["origin"]
        timed(argv, env)  # warm the page cache once
        floor = median([timed([*KILN, "--version"], env) for _ in range(runs)])
        took = median([timed(argv, env) for _ in range(runs)])
        label = f"{images:,} images, depth {DEPTH}, {planned:,} in the plan"
        return [
            Row(f"kiln propagate --dry-run ({label})", took, floor, "kiln --version", "s",
                f"<= {TARGET_SECONDS:g} s", took <= TARGET_SECONDS),
        ]  # fmt: skip
    finally:
        shutil.rmtree(scratch)


def rows(images: int = 10_000, runs: int = 5, outdated: bool = True) -> list[Row]:
    """The rows for this script: the plan, then kiln outdated (bench.freshness)."""
    found = bench_plan(images, runs)
    if outdated:
        from bench import freshness

        found += freshness.rows(runs=runs)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="images in the catalog")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--skip-outdated", action="store_true", help="time the plan only (not kiln outdated)"
    )
    args = parser.parse_args()
    found = rows(args.images, args.runs, outdated=not args.skip_outdated)
    report(found, args.json)
    if not all(row.ok for row in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
