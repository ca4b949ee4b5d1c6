"""Bake benchmarks, each against a peer measured in the same run.

    sudo .venv/bin/python -m bench.bake [--runs N] [--locked-only] [--json]

Each timed row is the median of N runs a side (default 3), the sides alternating which
goes first so neither always runs with the warmer caches.

1. A bake of examples/base.toml (--no-cache, fresh KILN_HOME) against mmdebstrap alone
   with the same suite, variant, packages and mirrors. Target: kiln <= 1.15x.
2. A no-change rebake of every example (`kiln bake examples/`, the whole process).
   Target: <= 2.5x `kiln --version`, the interpreter and import floor, measured beside it.
   The same with a shared PostgreSQL catalog (a throw-away cluster) is reported beside.
3. Layer capture throughput (tar -> sha256 -> gzip -> sha256 -> blob,
   kiln.store.layer.capture) against `tar -c | <the same compressor> | sha256sum` on the
   same tree (the unpacked base layer): ISA-L gzip at kiln's level, from the same pinned
   isal package, as a pipe. Target: >= 0.8x.
4. A locked rebuild of base.toml from kiln's package cache (--no-cache) against
   mmdebstrap installing the same packages from a local mirror of the same .debs: a flat
   repository (dpkg-scanpackages) of the lock's files from the package cache, read through
   a file:// URI. The like-for-like row. Target: kiln <= 1.05x.
5. The same locked rebuild against mmdebstrap from the host's configured mirror (what a
   user without kiln's cache waits for). Reported, no target.
6. The examples' layers as stored (gzip) against the same layers uncompressed (what
   stores held before layers were compressed). Reported, no target.

--locked-only runs 4 and 5 alone (a fresh KILN_HOME; `kiln lock` fills its cache first).
The examples are copied to a scratch folder first, so the lock is not written into the
checkout. Nothing is fetched from anywhere but the host's configured mirror.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import postgres
from bench.common import EXAMPLES, KILN, Row, median, report, timed
from kiln.bake.bases.debian import mmdebstrap_argv, sources
from kiln.bake.debcache import host_arch
from kiln.home import Home
from kiln.recipe import load_recipe
from kiln.recipe.lockfile import Lock, lock_path
from kiln.recipe.lockfile import parse as parse_lock
from kiln.store.layer import GZIP_LEVEL, capture, read_stream
from kiln.store.layout import Descriptor, Layout

# mmdebstrap's own hook that makes a file:// mirror visible to dpkg inside the root
AUTOMOUNT = "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount"
# the compressor kiln captures with, as a pipe: the same library, level and stream format
COMPRESS = shlex.join([sys.executable, "-m", "isal.igzip", f"-{GZIP_LEVEL}", "-n", "-c"])


def bench_base(runs: int, scratch: Path, examples: Path) -> tuple[Row, Path]:
    recipe = load_recipe(examples / "base.toml").recipe
    assert recipe.image.bootstrap is not None
    kiln_times, peer_times = [], []
    home = scratch / "home"
    ours_argv = [*KILN, "bake", "--no-cache", str(examples / "base.toml")]
    for run in range(runs):
        root = scratch / f"mmdebstrap-{run}"
        peer_argv = mmdebstrap_argv(
            recipe.image.bootstrap,
            recipe.packages.apt,
            root,
            sources(recipe.image.bootstrap),
        )
        peer_argv = [a for a in peer_argv if not a.startswith("--customize-hook")]
        # alternate the order so neither side always runs with the warmer caches
        if run % 2 == 0:
            peer_times.append(timed(peer_argv))
            kiln_times.append(timed(ours_argv, {"KILN_HOME": str(home)}))
        else:
            kiln_times.append(timed(ours_argv, {"KILN_HOME": str(home)}))
            peer_times.append(timed(peer_argv))
        shutil.rmtree(root)
    kiln_s, peer_s = median(kiln_times), median(peer_times)
    row = Row(
        "bake base.toml (no cache)",
        kiln_s,
        peer_s,
        "mmdebstrap",
        "s",
        "<= 1.15x",
        kiln_s <= 1.15 * peer_s,
    )
    return row, home


def local_mirror(home: Path, lock: Lock, folder: Path, suite: str) -> str:
    """A flat apt repository of the lock's .debs from the package cache, made the way a
    person makes one (dpkg-scanpackages); returns its sources.list line (file://)."""
    folder.mkdir(mode=0o755)
    cache = Home(home).debs
    for deb in lock.packages:
        os.link(cache / f"{deb.sha256}.deb", folder / deb.filename)
    index = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=folder,
        capture_output=True,
        check=True,
    ).stdout
    (folder / "Packages").write_bytes(index)
    # mmdebstrap picks the essential set by ?archive/?codename, which needs a Release file
    (folder / "Release").write_text(
        f"Suite: {suite}\nCodename: {suite}\nArchitectures: {host_arch()} all\nSHA256:\n"
        f" {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
    )
    return f"deb [trusted=yes] file://{folder} ./"


def bench_locked(home: Path, runs: int, examples: Path, scratch: Path) -> list[Row]:
    """The locked rebuild beside mmdebstrap from a local mirror of the same .debs and from
    the host's mirror, the three alternating, each the median of ``runs``."""
    env = {"KILN_HOME": str(home)}
    recipe_path = examples / "base.toml"
    timed([*KILN, "lock", str(recipe_path)], env)  # resolves, fills the cache, bakes once
    spec = load_recipe(recipe_path).recipe.image.bootstrap
    assert spec is not None
    lock = parse_lock(lock_path(recipe_path))
    local = local_mirror(home, lock, scratch / "mirror", spec.debian)
    names = tuple(sorted({deb.name for deb in lock.packages}))
    packages = load_recipe(recipe_path).recipe.packages.apt
    ours_argv = [*KILN, "bake", "--no-cache", str(recipe_path)]
    times: dict[str, list[float]] = {"kiln": [], "local": [], "mirror": []}

    def peer(root: Path, include: tuple[str, ...], mirrors: list[str], *hooks: str) -> float:
        argv = mmdebstrap_argv(spec, include, root, mirrors)
        argv = [argv[0], *hooks, *(a for a in argv[1:] if not a.startswith("--customize-hook"))]
        seconds = timed(argv)
        shutil.rmtree(root)
        return seconds

    sides = {
        "kiln": lambda run: timed(ours_argv, env),
        "local": lambda run: peer(scratch / f"local-{run}", names, [local], AUTOMOUNT),
        "mirror": lambda run: peer(scratch / f"mirror-{run}", packages, sources(spec)),
    }
    for run in range(runs):
        order = list(sides)[run % 3 :] + list(sides)[: run % 3]
        for side in order:
            times[side].append(sides[side](run))
    ours, fair, far = (median(times[side]) for side in ("kiln", "local", "mirror"))
    print(
        "locked rebuild runs (s): "
        + "; ".join(f"{side} {' '.join(f'{t:.2f}' for t in got)}" for side, got in times.items()),
        file=sys.stderr,
    )
    return [
        Row(
            "locked rebuild, same .debs",
            ours,
            fair,
            "mmdebstrap file://",
            "s",
            "<= 1.05x",
            ours <= 1.05 * fair,
        ),
        Row(
            "locked rebuild vs the mirror",
            ours,
            far,
            "mmdebstrap mirror",
            "s",
            "reported",
            True,
        ),
    ]


def bench_rebake(home: Path, runs: int, examples: Path, catalog: str | None = None) -> Row:
    """``catalog``: a KILN_CATALOG_URL (a shared PostgreSQL catalog), reported beside the
    embedded SQLite one without a target: every question then goes through SQLAlchemy."""
    env = {"KILN_HOME": str(home)}
    if catalog is not None:
        env["KILN_CATALOG_URL"] = catalog
    timed([*KILN, "bake", str(examples)], env)  # bake what is missing; warms the page cache
    ours = median([timed([*KILN, "bake", str(examples)], env) for _ in range(max(runs, 5))])
    floor = median([timed([*KILN, "--version"], env) for _ in range(max(runs, 5))])
    if catalog is not None:
        return Row(
            "  the same, PostgreSQL catalog", ours, floor, "kiln --version", "s", "reported", True
        )
    return Row(
        "no-change rebake of examples/",
        ours,
        floor,
        "kiln --version",
        "s",
        "<= 2.5x",
        ours <= 2.5 * floor,
    )


def bench_rebake_postgres(home: Path, runs: int, examples: Path) -> Row | None:
    """The rebake against a PostgreSQL catalog holding the same images: the store is
    shared, the first bake into the empty catalog builds each image once more."""
    try:
        with postgres.cluster() as running:
            return bench_rebake(home, runs, examples, running.database())
    except postgres.Missing as exc:
        print(f"no PostgreSQL row: {exc}", file=sys.stderr)
        return None


def _largest_layer(home: Path) -> Path:
    layers = [p for p in (home / "layers").iterdir() if p.is_dir()]
    sizes = {
        p: int(
            subprocess.run(
                ["du", "-sb", str(p)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
        for p in layers
    }
    return max(sizes, key=lambda p: sizes[p])


def bench_capture(home: Path, runs: int, scratch: Path) -> Row:
    tree = _largest_layer(home)
    size = int(
        subprocess.run(
            f"tar -c -C {tree} . | wc -c", shell=True, capture_output=True, text=True, check=True
        ).stdout
    )
    layout = Layout(scratch / "oci")
    layout.init()
    peer_times, kiln_times = [], []
    for _ in range(runs + 1):  # the first round warms the page cache and is dropped
        start = time.perf_counter()
        subprocess.run(
            f"tar -c -C {tree} . | {COMPRESS} | sha256sum > /dev/null", shell=True, check=True
        )
        peer_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        capture(layout, scratch / "tmp", tree)
        kiln_times.append(time.perf_counter() - start)
    mb = size / 1e6
    kiln_rate, peer_rate = mb / min(kiln_times[1:]), mb / min(peer_times[1:])
    return Row(
        f"layer capture ({mb:.0f} MB tree)",
        kiln_rate,
        peer_rate,
        "tar|igzip|sha256sum",
        "MB/s",
        ">= 0.8x",
        kiln_rate >= 0.8 * peer_rate,
    )


def bench_store_size(home: Path) -> Row:
    """MB of the layer blobs the store's images use, against the same layers uncompressed."""
    layout = Layout(home / "oci")
    layers: dict[str, Descriptor] = {}
    for ref in layout.refs().values():
        for blob in layout.read_json(ref.digest)["layers"]:
            layers[blob["digest"]] = Descriptor.from_json(blob)
    plain = 0

    def count(chunk: bytes) -> None:
        nonlocal plain
        plain += len(chunk)

    for blob in layers.values():
        fd = os.open(layout.blob_path(blob.digest), os.O_RDONLY)
        with os.fdopen(fd, "rb", buffering=0) as source:
            read_stream(source, blob, count)
    stored = sum(blob.size for blob in layers.values())
    return Row(
        f"store size, {len(layers)} example layers",
        stored / 1e6,
        plain / 1e6,
        "uncompressed",
        "MB",
        "report",
        True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs a side (median)")
    parser.add_argument("--locked-only", action="store_true", help="rows 4 and 5 alone")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-", dir="/var/tmp") as folder:
        scratch = Path(folder)
        examples = scratch / "examples"
        shutil.copytree(EXAMPLES, examples, symlinks=True)
        os.chmod(scratch, 0o755)  # apt reads the local mirror as _apt
        if args.locked_only:
            measured: list[Row | None] = [
                *bench_locked(scratch / "home", args.runs, examples, scratch)
            ]
        else:
            base, home = bench_base(args.runs, scratch, examples)
            measured = [
                base,
                bench_rebake(home, args.runs, examples),
                bench_rebake_postgres(home, args.runs, examples),
                bench_capture(home, args.runs, scratch),
                *bench_locked(home, args.runs, examples, scratch),
                bench_store_size(home),
            ]
    rows = [row for row in measured if row is not None]
    report(rows, args.json)
    if not all(row.ok for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
