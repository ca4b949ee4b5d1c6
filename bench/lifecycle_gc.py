"""Retention benchmark: `kiln gc --dry-run` over a catalog of 10,000 image versions.

    .venv/bin/python -m bench.lifecycle_gc [--images N] [--runs N]

The catalog is made by direct SQL inserts (images in families with parents, packages,
artefacts, channel histories, machines, events) and the store by writing tiny blobs: each
image's layer, config and manifest and its provenance and SBOM referrers, all named in
one index.json. The whole process is timed (interpreter, imports, policy, catalog
snapshot, decision, the store walk and the listing), against `kiln --version` measured
beside it. Target: <= 1 s absolute; the ratio is reported with it. The same with --json
(every blob an item) and the real gc that follows are reported without a target.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import KILN, Row, insert_images, median, report, timed
from kiln.digests import canonical_json
from kiln.home import Home
from kiln.store import artefacts
from kiln.store.layout import (
    MEDIA_CONFIG,
    MEDIA_LAYER,
    MEDIA_MANIFEST,
    REF_ANNOTATION,
    Descriptor,
    Layout,
)

TARGET_SECONDS = 1.0
VERSIONS = 100  # per name
BASES = 10  # names without a parent; every other name builds on one of them
FLAGS = ["--keep-last", "5", "--keep-younger-than", "30d", "--keep-channel-history", "14d"]


def _blob(layout: Layout, data: bytes, media_type: str) -> Descriptor:
    """A blob written plainly (no fsync: the bench measures gc, not the setup)."""
    digest = hashlib.sha256(data).hexdigest()
    path = layout.blobs / digest
    if not path.exists():
        path.write_bytes(data)
    return Descriptor(media_type, f"sha256:{digest}", len(data))


def synthetic(home: Home, images: int, now: datetime) -> int:
    """Fill an empty KILN_HOME with ``images`` versions; returns how many there are."""
    from kiln.catalog import Catalog

    home.ensure()
    layout = Layout(home.oci, tmp=home.tmp)
    layout.init()
    Catalog(home.catalog_url).close()  # the schema, at HEAD
    rng = random.Random(7)
    names = max(BASES + 1, images // VERSIONS)
    rows, packages, arts, entries, events = [], [], [], [], []
    ids: dict[tuple[str, int], int] = {}
    next_id = 1
    for family in range(names):
        name = f"base{family}" if family < BASES else f"app{family}"
        for version in range(1, VERSIONS + 1):
            if next_id > images:
                break
            created = now - timedelta(days=200 * (VERSIONS - version) / VERSIONS, minutes=family)
            parent = None
            if family >= BASES:  # a base version that existed when this one was baked
                parent = ids[(f"base{family % BASES}", rng.randint(1, version))]
            layer = _blob(layout, f"{name}:{version}".encode(), MEDIA_LAYER)
            config = _blob(
                layout,
                canonical_json({"rootfs": {"type": "layers", "diff_ids": [layer.digest]}}),
                MEDIA_CONFIG,
            )
            manifest = _blob(
                layout,
                canonical_json(
                    {
                        "schemaVersion": 2,
                        "mediaType": MEDIA_MANIFEST,
                        "config": config.to_json(),
                        "layers": [layer.to_json()],
                    }
                ),
                MEDIA_MANIFEST,
            )
            entry = manifest.to_json()
            entry["annotations"] = {REF_ANNOTATION: f"{name}:{version}"}
            entries.append(entry)
            stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
            for kind in ("provenance", "sbom"):
                document = f'{{"{kind}": "{name}:{version}"}}'.encode()
                referrer = artefacts.put(
                    layout, manifest, kind, "application/json", document, stamp
                )
                entries.append(referrer.to_json())
                arts.append((next_id, kind, "application/json", referrer.digest, "sha256:x"))
            rows.append(
                (
                    next_id,
                    name,
                    version,
                    manifest.digest,
                    config.digest,
                    parent,
                    f"{next_id:064x}",
                    f"/srv/recipes/{name}.toml",
                    "0" * 64,
                    "parent" if parent else "bootstrap",
                    created.isoformat(sep=" "),
                    "ok",
                    len(f"{name}:{version}"),
                    1.0,
                )
            )
            for number in range(3):
                deb = hashlib.sha256(f"{name}-{version}-{number}".encode()).hexdigest()
                packages.append((next_id, f"pkg{number}", f"1.{version}", "amd64", deb))
            events.append((created.isoformat(sep=" "), "baked", name, version, manifest.digest))
            ids[(name, version)] = next_id
            next_id += 1
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
    (home.oci / "index.json").write_bytes(canonical_json({**index, "manifests": entries}))
    assignments, machines = [], []
    for family in range(BASES, names):
        name = f"app{family}"
        for channel_number, channel in enumerate(("dev", "staging", "prod")):
            for step in range(20):
                version = min(VERSIONS, 10 + step * 4 + channel_number)
                if (name, version) not in ids:
                    continue
                at = now - timedelta(days=100 - step * 5 + channel_number)
                assignments.append(
                    (name, channel, ids[(name, version)], at.isoformat(sep=" "), "promote")
                )
        if (name, 50) in ids:
            removed = (now - timedelta(days=1)).isoformat(sep=" ") if family % 2 else None
            machines.append((f"{name}-1", ids[(name, 50)], f"{name}:50", removed))
    db = sqlite3.connect(home.root / "catalog.db")
    with db:
        insert_images(db, rows)
        db.executemany(
            "INSERT INTO packages (image_id, name, version, architecture, sha256)"
            " VALUES (?, ?, ?, ?, ?)",
            packages,
        )
        db.executemany(
            "INSERT INTO artefacts (image_id, kind, media_type, manifest_digest, digest)"
            " VALUES (?, ?, ?, ?, ?)",
            arts,
        )
        db.executemany(
            "INSERT INTO channel_assignments (name, channel, image_id, at, action, actor,"
            " forced, gates) VALUES (?, ?, ?, ?, ?, 'bench', 0, '[]')",
            assignments,
        )
        db.executemany(
            "INSERT INTO machines (name, image_id, image_ref, digest, folder, created,"
            " removed, nspawn_pid, leader_pid, config, secret_keys, volumes, throwaway)"
            " VALUES (?, ?, ?, '', '', ?, ?, 0, 0, '{}', '[]', '{}', 0)",
            [(n, i, r, now.isoformat(sep=" "), gone) for n, i, r, gone in machines],
        )
        db.executemany(
            "INSERT INTO events (at, kind, name, version, digest, machine, actor, detail)"
            " VALUES (?, ?, ?, ?, ?, '', 'bench', '{}')",
            events,
        )
        db.execute(
            "INSERT INTO image_names (name, last_version)"
            " SELECT name, max(version) FROM images GROUP BY name"
        )
    db.close()
    return len(rows)


def bench_gc(images: int, runs: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-gc-", dir="/var/tmp") as folder:
        home = Home(Path(folder) / "home")
        made = synthetic(home, images, datetime.now(UTC))
        env = {"KILN_HOME": str(home.root), "KILN_POLICY": ""}
        dry = [*KILN, "gc", "--dry-run", *FLAGS]
        timed(dry, env)  # warms the page cache and compiles the bytecode
        ours = median([timed(dry, env) for _ in range(runs)])
        as_json = median([timed([*dry, "--json"], env) for _ in range(runs)])
        floor = median([timed([*KILN, "--version"], env) for _ in range(runs)])
        real = timed([*KILN, "gc", *FLAGS], env)
    return [
        Row(
            f"gc --dry-run, {made} images",
            ours,
            floor,
            "kiln --version",
            "s",
            f"<= {TARGET_SECONDS:.0f} s",
            ours <= TARGET_SECONDS,
        ),
        Row("  the same, --json", as_json, floor, "kiln --version", "s", "reported", True),
        Row("  gc removing them, once", real, floor, "kiln --version", "s", "reported", True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="image versions to make")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = bench_gc(args.images, args.runs)
    report(rows, args.json)
    if not all(row.ok for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
