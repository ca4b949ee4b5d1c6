"""Lifecycle benchmarks, each against a peer measured in the same run.

    sudo .venv/bin/python -m bench.lifecycle [--images N] [--runs N] [--json] [--skip-drift]

1. `kiln where` over a synthetic catalog of 10,000 images (bench/lifecycle_where.py).
   Target: <= 1 s, whole process.
2. `kiln gc --dry-run` over 10,000 images (bench/lifecycle_gc.py). Target: <= 1 s.
3. `kiln drift --deep` of a machine after 5 changes against `aide --check` on the same
   machine (bench/lifecycle_drift.py). Target: >= 3x faster than AIDE. The upper-dir scan
   (`kiln drift`) against AIDE and `dpkg --verify` is reported beside it.
4. What a trust policy that requires signatures costs `kiln run`
   (bench/lifecycle_signing.py). Reported.

3 and 4 bake examples/ into a scratch KILN_HOME first (a minute or two) and boot machines.
"""

from __future__ import annotations

import argparse
import sys

from bench import lifecycle_drift, lifecycle_gc, lifecycle_signing, lifecycle_where
from bench.common import Row, report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="synthetic catalog size")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--skip-drift", action="store_true", help="no machines: 1 and 2 only")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows: list[Row] = []
    rows += lifecycle_where.rows(args.images, args.runs)
    rows += lifecycle_gc.bench_gc(args.images, args.runs)
    if not args.skip_drift:
        rows += lifecycle_drift.rows(None, args.runs)
        rows += lifecycle_signing.rows(None, args.runs)
    report(rows, args.json)
    if not all(row.ok for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
