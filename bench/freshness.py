"""`kiln outdated` over a large catalog with warm indexes: the whole process, against its floor.

    .venv/bin/python -m bench.freshness [--images N] [--packages N] [--runs N] [--json]

A synthetic catalog (SQLite at the schema's HEAD, direct SQL inserts): N images (default
1,000) in N/2 names, two versions each with channel ``prod`` on the first, so the default
targets (every channel head, each name's newest) are all N; each image holds M packages
(default 200) drawn from a pool of 20,000. Every image's apt sources are already read
(``cache/apt-indexes/images/``) and name one repository with ``bookworm`` and
``bookworm-security``, whose Release files and Packages indexes (real format: 20,000 and
1,000 paragraphs) a fetch left in the index cache a minute ago, parsed (the warm state
after one ``kiln outdated``). A first run records the sightings; then each side is a
whole process, the median of R runs:

1. `kiln outdated --json --offline` against `kiln --version`. Target: <= 2.0 s absolute.
2. `kiln outdated --offline` (the table). Reported.
3. `kiln where --json`: the matrix with every image's freshness cell (cached indexes only).
   Target: <= 1.0 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import KILN, Row, insert_images, median, stamp, timed
from kiln.apt import indexes
from kiln.catalog import Catalog
from kiln.lifecycle.freshness import SOURCES_FORMAT

POOL = 20_000
SECURITY = 1_000
URL = "http://127.0.0.1:9/"
LINES = (
    f"deb [trusted=yes] {URL} bookworm main",
    f"deb [trusted=yes] {URL} bookworm-security main",
)
TARGET_SECONDS = 2.0


def _paragraph(n: int, version: str) -> str:
    arch = "all" if n % 7 == 0 else "amd64"
    return (
        f"Package: pkg{n}\nVersion: {version}\nArchitecture: {arch}\nPriority: optional\n"
        f"Section: misc\nMaintainer: bench <bench@localhost>\nInstalled-Size: {n % 900}\n"
        f"Depends: libc6 (>= 2.36)\nDescription: package {n}\n a synthetic package\n"
        f"Filename: pool/main/p/pkg{n}/pkg{n}_{version}_{arch}.deb\nSize: {1000 + n}\n"
        f"SHA256: {n:064x}\n"
    )


def _release(suite: str, label: str) -> str:
    return (
        f"Origin: Debian\nLabel: {label}\nSuite: {suite}\nCodename: {suite}\n"
        "Architectures: amd64\nComponents: main\n"
    )


def indexes_cache(home: Path, at: datetime) -> None:
    """What one fetch of LINES leaves: lists, Release files, fetched.json, then parsed."""
    folder = indexes.folder_of(indexes.cache_root(home), LINES)
    lists = folder / "lists"
    lists.mkdir(parents=True)
    stem = "127.0.0.1:9_dists_{}_"
    suites = {
        "bookworm": ("Debian", [_paragraph(n, f"1.{n % 5}-1") for n in range(POOL)]),
        "bookworm-security": (
            "Debian-Security",
            [_paragraph(n, "1.9-1+deb12u1") for n in range(0, POOL, POOL // SECURITY)],
        ),
    }
    targets = []
    for suite, (label, paragraphs) in suites.items():
        (lists / (stem.format(suite) + "Release")).write_text(_release(suite, label))
        index = lists / (stem.format(suite) + "main_binary-amd64_Packages")
        index.write_text("\n".join(paragraphs))
        targets.append(f"{index}\tmain/binary-amd64/Packages\tPackages\t{URL}\tamd64")
    (folder / "sources.list").write_text("\n".join(LINES) + "\n")
    fetched = {"format": 1, "at": at.isoformat(), "arch": "amd64", "targets": "\n".join(targets)}
    (folder / "fetched.json").write_text(json.dumps(fetched))
    indexes.build_view(folder, LINES)


def synthetic(home: Path, images: int, packages: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    Catalog(f"sqlite:///{home / 'catalog.db'}").close()
    now = datetime.now(UTC)
    names = images // 2
    db = sqlite3.connect(home / "catalog.db")
    rows, pkgs, assignments = [], [], []
    sources = indexes.cache_root(home) / "images"
    sources.mkdir(parents=True)
    own = json.dumps({"format": SOURCES_FORMAT, "own": True, "lines": sorted(LINES), "files": []})
    image_id = 0
    for name in range(names):
        for version in (1, 2):
            image_id += 1
            digest = f"{image_id:064x}"
            rows.append(
                (image_id, f"img{name}", version, f"sha256:{digest}", f"sha256:{digest}", None,
                 digest, f"/recipes/img{name}.toml", "0" * 64, "bootstrap",
                 stamp(now - timedelta(hours=3 - version)), "ok", 1 << 20, 1.0)
            )  # fmt: skip
            (sources / f"{digest}.json").write_text(own)
            for k in range(packages):
                n = (name * 37 + k * 101) % POOL
                arch = "all" if n % 7 == 0 else "amd64"
                installed = f"1.{(n + version) % 5}-1"  # older, equal or newer than bookworm's
                pkgs.append((image_id, f"pkg{n}", installed, arch, ""))
            if version == 1:
                assignments.append(
                    (f"img{name}", "prod", image_id, None, "promote", stamp(now), "bench", 0, "[]")
                )
    insert_images(db, rows)
    db.executemany(
        "INSERT INTO image_names (name, last_version) VALUES (?, 2)",
        [(f"img{name}",) for name in range(names)],
    )
    db.executemany(
        "INSERT INTO packages (image_id, name, version, architecture, sha256)"
        " VALUES (?, ?, ?, ?, ?)",
        pkgs,
    )
    db.executemany(
        "INSERT INTO channel_assignments (name, channel, image_id, previous_id, action, at,"
        " actor, forced, gates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        assignments,
    )
    db.commit()
    db.close()
    indexes_cache(home, now - timedelta(minutes=1))


def _outdated(argv: list[str], env: dict[str, str]) -> float:
    """One run; exit 1 (something is outdated) is the expected answer here."""
    start = time.perf_counter()
    result = subprocess.run(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=False,
    )  # fmt: skip
    took = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode()}")
    return took


def rows(images: int = 1_000, packages: int = 200, runs: int = 5) -> list[Row]:
    """The rows for this script, bench/propagate.py or bench/lifecycle.py."""
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-outdated-", dir="/var/tmp"))
    try:
        home = scratch / "home"
        synthetic(home, images, packages)
        env = {"KILN_HOME": str(home), "COLUMNS": "200", "KILN_POLICY": ""}
        as_json = [*KILN, "outdated", "--json", "--offline"]
        _outdated(as_json, env)  # the first run records the sightings
        floor = median([timed([*KILN, "--version"], env) for _ in range(runs)])
        warm = median([_outdated(as_json, env) for _ in range(runs)])
        table = median([_outdated([*KILN, "outdated", "--offline"], env) for _ in range(runs)])
        where = median([timed([*KILN, "where", "--json"], env) for _ in range(runs)])
        label = f"{images:,} images x {packages}"
        return [
            Row(f"kiln outdated --json ({label})", warm, floor, "kiln --version", "s",
                f"<= {TARGET_SECONDS:g} s", warm <= TARGET_SECONDS),
            Row(f"kiln outdated, table ({label})", table, floor, "kiln --version", "s",
                "reported", True),
            Row(f"kiln where --json, {images:,} fresh cells", where, floor, "kiln --version", "s",
                "<= 1 s", where <= 1.0),
        ]  # fmt: skip
    finally:
        shutil.rmtree(scratch)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1_000, help="images (default targets)")
    parser.add_argument("--packages", type=int, default=200, help="packages per image")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    found = rows(args.images, args.packages, args.runs)
    if args.json:
        print(json.dumps([row.__dict__ for row in found], indent=2))
    else:
        for row in found:
            print(row.render())
    if not all(row.ok for row in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
