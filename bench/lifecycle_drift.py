"""Drift detection: `kiln drift` against AIDE and dpkg --verify on the same machine.

    sudo .venv/bin/python -m bench.lifecycle_drift [--home KILN_HOME] [--runs N] [--json]

A machine is booted from web; AIDE's database of its root (the overlay mount as the host
sees it, machines/<name>/root) is made right after the boot. Then five changes are made
inside the machine (kiln exec): a file edited, one added, one deleted, one chmod'ed and one
written in the state volume /var/lib/web. Each side is a whole process, the median of N
runs (5 unless told), in the same run, the sides taking turns run by run (kiln, kiln
--deep, aide, dpkg, then again), so that a host someone else also loads weighs on each alike:

1. `kiln drift NAME --deep --json` (every file the machine sees re-hashed against the
   layers' inventories) against `aide --check` (sha256, type, mode, owner, size and link
   target of every file; the same paths left out as kiln leaves out: kernel and runtime
   file systems, logs, caches, temp files, the state path; both cores given to it,
   num_workers=2). Both read every file: the like-for-like row. Target: kiln >= 3x
   faster. kiln must report exactly the four changes outside the volume.
2. `kiln drift NAME --json` (the machine's overlay upper dir alone) against the same
   `aide --check`. Reported beside 1, no target; kiln must report the same four changes.
3. The upper-dir scan against `dpkg --root=ROOT --verify` (md5sums of the packages'
   files). Reported, no target.
4. What recording a layer's inventory costs a bake: kiln.store.inventory.record on web's
   base layer against capturing that same layer (kiln.store.layer.capture), in process.
   Reported, no target.

Without --home, examples/ is baked into a scratch KILN_HOME first (a minute or two). The
machine is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import EXAMPLES, KILN, Row, kiln, median
from kiln.machines.converge import VOLATILE
from kiln.mounts import remove_tree
from kiln.store import inventory
from kiln.store.layer import capture
from kiln.store.layout import Layout

TARGET = 3.0  # kiln drift --deep against aide --check
STATE = "/var/lib/web"
CHANGES = {  # what kiln drift must report: path -> change
    "/etc/nginx/nginx.conf": "changed",
    "/usr/local/bin/bench-added": "added",
    "/etc/issue.net": "deleted",
    "/etc/debian_version": "metadata",
}
MAKE_CHANGES = (
    "echo '# tuned' >> /etc/nginx/nginx.conf"
    " && echo hello > /usr/local/bin/bench-added"
    " && rm /etc/issue.net"
    " && chmod 600 /etc/debian_version"
    f" && echo kept > {STATE}/bench-state"
)


def _times(sides: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, float]:
    """The median wall-clock seconds of each side's argv (a non-zero exit is a finding, not
    a failure). The sides take turns, run by run: on a host someone else also loads, a
    busy spell then weighs on every side alike rather than on the one it fell on."""
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(runs):
        for side, argv in sides.items():
            begin = time.perf_counter()
            subprocess.run(
                argv,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            seconds[side].append(time.perf_counter() - begin)
    return {side: median(values) for side, values in seconds.items()}


def _reports_changes(home: Path, name: str, *flags: str) -> bool:
    """Whether ``kiln drift NAME [flags]`` reports exactly the changes made (and says what
    it reported instead)."""
    done = kiln(home, "drift", name, *flags, "--json", check=False)
    found: dict[str, Any] = json.loads(done.stdout)
    reported = {c["path"]: c["change"] for c in found["changes"] + found["metadata"]}
    if reported != CHANGES:
        print(
            f"kiln drift {' '.join(flags)} reported {reported}, expected {CHANGES}", file=sys.stderr
        )
    return reported == CHANGES


def aide_config(folder: Path, root: Path) -> Path:
    """AIDE checking ``root`` as a machine sees it, leaving out what kiln leaves out."""
    lines = [
        f"database_in=file:{folder / 'aide.db'}",
        f"database_out=file:{folder / 'aide.db.new'}",
        f"root_prefix={root}",
        "gzip_dbout=no",
        "num_workers=2",
        "report_url=stdout",
        "Drift = ftype+p+u+g+s+l+sha256",
        "/ Drift",
        *(f"!{path}" for path in (*VOLATILE, STATE)),
    ]
    config = folder / "aide.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def inventory_cost(home: Path, layer: Path, runs: int) -> tuple[float, float]:
    """Seconds to record the layer's inventory and to capture it (medians)."""
    scratch = Path(tempfile.mkdtemp(prefix="inventory-", dir=home / "tmp"))
    try:
        layout = Layout(scratch / "oci", tmp=scratch)
        layout.init()
        recorded, captured = [], []
        for _ in range(runs):
            begin = time.perf_counter()
            inventory.record(layout, layer, f"sha256:{layer.name}")
            recorded.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            capture(layout, scratch, layer)
            captured.append(time.perf_counter() - begin)
        return median(recorded), median(captured)
    finally:
        shutil.rmtree(scratch)


def measure(home: Path, runs: int) -> list[Row]:
    name = f"bench-drift-{secrets.token_hex(3)}"
    folder = Path(tempfile.mkdtemp(prefix="aide-", dir="/var/tmp"))
    try:
        config_values = ("--set", "site_title=drift", "--set", "api_token=not-a-secret")
        kiln(home, "run", "web", "--name", name, "--wait", *config_values)
        root = home / "machines" / name / "root"
        config = aide_config(folder, root)
        subprocess.run(["aide", f"--config={config}", "--init"], capture_output=True, check=True)
        (folder / "aide.db.new").rename(folder / "aide.db")
        kiln(home, "exec", name, "--", "sh", "-c", MAKE_CHANGES)
        right = _reports_changes(home, name) and _reports_changes(home, name, "--deep")
        aide = subprocess.run(
            ["aide", f"--config={config}", "--check"], capture_output=True, text=True
        )
        print(
            f"aide --check exit {aide.returncode} (non-zero: it found changes); "
            f"kiln drift found {'the' if right else 'other than the'} {len(CHANGES)} changes",
            file=sys.stderr,
        )
        sides = {
            "upper": [*KILN, "drift", name, "--json"],
            "deep": [*KILN, "drift", name, "--deep", "--json"],
            "aide": ["aide", f"--config={config}", "--check"],
            "dpkg": ["dpkg", f"--root={root}", "--verify"],
        }
        timed = _times(sides, runs, {"KILN_HOME": str(home)})
        kiln_seconds, deep_seconds = timed["upper"], timed["deep"]
        aide_seconds, dpkg_seconds = timed["aide"], timed["dpkg"]
        state = json.loads((home / "machines" / name / "machine.json").read_text())
        recorded, captured = inventory_cost(home, Path(state["layers"][0]), runs)
    finally:
        kiln(home, "rm", "--force", "--volumes", name, check=False)
        shutil.rmtree(folder, ignore_errors=True)
    return [
        Row(
            "kiln drift --deep vs aide",
            deep_seconds,
            aide_seconds,
            "aide --check",
            "s",
            f">= {TARGET:.0f}x",
            right and aide_seconds / deep_seconds >= TARGET,
        ),
        Row(
            "  upper-dir scan vs aide",
            kiln_seconds,
            aide_seconds,
            "aide --check",
            "s",
            "reported",
            right,
        ),
        Row(
            "  upper-dir scan vs dpkg",
            kiln_seconds,
            dpkg_seconds,
            "dpkg --verify",
            "s",
            "reported",
            right,
        ),
        Row(
            "inventory at bake (base layer)",
            recorded,
            captured,
            "its capture",
            "s",
            "reported",
            True,
        ),
    ]


def rows(home: Path | None = None, runs: int = 5) -> list[Row]:
    """The rows for this script or bench/lifecycle.py; ``home`` holds a web image, else
    examples/ is baked into a scratch store first."""
    if shutil.which("aide") is None:
        raise SystemExit("aide is not installed: run scripts/setup")
    if home is not None:
        return measure(home, runs)
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/var/tmp"))
    try:
        examples = scratch / "examples"
        shutil.copytree(EXAMPLES, examples, symlinks=True)
        baked = scratch / "home"
        kiln(baked, "bake", str(examples))
        return measure(baked, runs)
    finally:
        remove_tree(scratch)  # never crosses into a mount that is still there


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a KILN_HOME with a web image in it")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    found = rows(args.home.absolute() if args.home else None, args.runs)
    if args.json:
        print(json.dumps([row.__dict__ for row in found], indent=2))
    else:
        for row in found:
            ratio = row.peer / row.kiln if row.kiln else float("nan")
            print(f"{row.render()}   ({row.peer_name} / kiln = {ratio:.1f}x)")
    if not all(row.ok for row in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
