"""`kiln where` on a large catalog: the whole process, against its floor.

    .venv/bin/python -m bench.lifecycle_where [--images N] [--runs N] [--json]

A synthetic catalog (SQLite, at the schema's HEAD, filled with direct SQL inserts): N
images (default 10,000) in 100 names, each role name built on a base name's versions;
three channels per name with twenty assignments each; 500 machines (their folders absent,
as after a host was wiped: kiln reads each state file it finds); a few revocations whose
descendants number in the hundreds; signatures on every tenth image. Each side is a whole
process, the median of N runs, in the same run:

1. `kiln where` (the environment matrix, rendered) against `kiln --version` (the
   interpreter and import floor). Target: kiln <= 1.0 s absolute; the ratio is shown.
2. `kiln where --json` against the `sqlite3` command answering the matrix's core (every
   channel's head with its image) from the same file. Reported, no target.
3. `kiln where NAME --json` and `kiln where --revoked --json`. Target: <= 1.0 s each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import KILN, Row, insert_images, median, stamp, timed
from kiln.catalog import Catalog

NAMES = 100
BASES = 10  # names 0..9 are bases; the others build on them
CHANNELS = ("dev", "staging", "prod")
ASSIGNMENTS = 20  # per channel
MACHINES = 500
TARGET_SECONDS = 1.0
HEADS_SQL = (
    "SELECT a.name, a.channel, i.version, i.digest FROM channel_assignments a "
    "JOIN (SELECT max(id) AS id FROM channel_assignments GROUP BY name, channel) h "
    "ON h.id = a.id LEFT JOIN images i ON i.id = a.image_id ORDER BY a.name, a.channel;"
)


def synthetic(home: Path, images: int) -> None:
    """Fill a new catalog in ``home`` with ``images`` images and their estate."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / 'catalog.db'}"
    Catalog(url).close()  # the schema at HEAD, as kiln makes it
    now = datetime.now(UTC)
    per_name = images // NAMES
    db = sqlite3.connect(home / "catalog.db")
    rows = []
    ids: dict[tuple[int, int], int] = {}
    next_id = 1
    for name in range(NAMES):
        for version in range(1, per_name + 1):
            parent = None
            if name >= BASES:
                parent = ids[(name % BASES, max(1, version // 2))]
            ids[(name, version)] = next_id
            digest = f"sha256:{next_id:064x}"
            created = stamp(now - timedelta(hours=per_name - version))
            rows.append(
                (next_id, f"img{name}", version, digest, digest, parent, f"{next_id:064x}",
                 f"/recipes/img{name}.toml", "0" * 64,
                 "parent" if parent else "bootstrap", created, "ok", 1 << 20, 1.0)
            )  # fmt: skip
            next_id += 1
    insert_images(db, rows)
    db.executemany(
        "INSERT INTO image_names (name, last_version) VALUES (?, ?)",
        [(f"img{name}", per_name) for name in range(NAMES)],
    )
    assignments = []
    for name in range(NAMES):
        for number, channel in enumerate(CHANNELS):
            previous: int | None = None
            for step in range(ASSIGNMENTS):
                version = max(1, per_name - ASSIGNMENTS * (number + 1) + step)
                image = ids[(name, version)]
                at = stamp(now - timedelta(minutes=ASSIGNMENTS - step))
                assignments.append(
                    (f"img{name}", channel, image, previous, "promote", at, "bench", 0, "[]")
                )
                previous = image
    db.executemany(
        "INSERT INTO channel_assignments (name, channel, image_id, previous_id, action, at,"
        " actor, forced, gates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        assignments,
    )
    machines = []
    for number in range(MACHINES):
        name = number % NAMES
        image = ids[(name, per_name - number % 5)]
        machines.append(
            (f"m{number}", image, f"img{name}:{per_name - number % 5}", f"sha256:{image:064x}",
             str(home / "machines" / f"m{number}"), stamp(now), 0, 0, "{}", "[]", "{}", 0)
        )  # fmt: skip
    db.executemany(
        "INSERT INTO machines (name, image_id, image_ref, digest, folder, created, nspawn_pid,"
        " leader_pid, config, secret_keys, volumes, throwaway)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        machines,
    )
    revoked = [ids[(base, 1)] for base in range(3)] + [ids[(BASES, per_name)]]
    db.executemany(
        "INSERT INTO revocations (image_id, reason, effective, created, actor)"
        " VALUES (?, 'bench', ?, ?, 'bench')",
        [(image, stamp(now - timedelta(days=1)), stamp(now)) for image in revoked],
    )
    db.executemany(
        "INSERT INTO signatures (image_id, digest, key_id, signature_manifest, created, actor)"
        " VALUES (?, ?, 'key', 'sha256:0', ?, 'bench')",
        [(i, f"sha256:{i:064x}", stamp(now)) for i in range(1, next_id, 10)],
    )
    db.commit()
    db.close()


def _median(argv: list[str], home: Path, runs: int) -> float:
    env = {"KILN_HOME": str(home), "COLUMNS": "200"}
    timed(argv, env)  # warm the page cache and the catalog once
    return median([timed(argv, env) for _ in range(runs)])


def bench_where(images: int, runs: int) -> list[Row]:
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-where-", dir="/var/tmp"))
    try:
        home = scratch / "home"
        synthetic(home, images)
        # the first read settles any scheduled revocation: none here, but keep it out
        subprocess.run([*KILN, "where"], env={"KILN_HOME": str(home)}, check=False,
                       capture_output=True)  # fmt: skip
        floor = _median([*KILN, "--version"], home, runs)
        matrix = _median([*KILN, "where"], home, runs)
        as_json = _median([*KILN, "where", "--json"], home, runs)
        sqlite = _median(["sqlite3", str(home / "catalog.db"), HEADS_SQL], home, runs)
        family = _median([*KILN, "where", f"img{BASES}", "--json"], home, runs)
        revoked = [*KILN, "where", "--revoked", "--json"]
        only_revoked = _median(revoked, home, runs)
        label = f"{images:,} images"
        target = f"<= {TARGET_SECONDS:g} s"
        return [
            Row(f"kiln where ({label})", matrix, floor, "kiln --version", "s", target,
                matrix <= TARGET_SECONDS),
            Row(f"kiln where --json ({label})", as_json, sqlite, "sqlite3 heads", "s",
                "reported", True),
            Row(f"kiln where NAME --json ({label})", family, floor, "kiln --version", "s",
                target, family <= TARGET_SECONDS),
            Row(f"kiln where --revoked ({label})", only_revoked, floor, "kiln --version", "s",
                target, only_revoked <= TARGET_SECONDS),
        ]  # fmt: skip
    finally:
        shutil.rmtree(scratch)


def rows(images: int = 10_000, runs: int = 5) -> list[Row]:
    """The rows for this script or bench/lifecycle.py."""
    if shutil.which("sqlite3") is None:
        raise SystemExit("the sqlite3 command is not installed: apt-get install sqlite3")
    return bench_where(images, runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="images in the catalog")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    found = rows(args.images, args.runs)
    if args.json:
        print(json.dumps([row.__dict__ for row in found], indent=2))
    else:
        for row in found:
            print(f"{row.render()}   (absolute target {TARGET_SECONDS:g} s)")
    if not all(row.ok for row in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
