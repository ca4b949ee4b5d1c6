"""What checking a layer's digest as it unpacks costs, against an unchecked unpack.

    sudo .venv/bin/python -m bench.verify [--home KILN_HOME] [--runs N] [--json]

kiln's side is ``kiln.store.layer.unpack`` on the base layer of a store: the blob streamed
through sha256 into GNU tar's stdin, then whiteouts put in overlay form. The peer is plain
``tar --extract --file=BLOB`` with the same flags, in the same run. Both sides alternate
which goes first; each reports the median of N runs. Target: kiln <= 1.10x.

Without --home, examples/base.toml is baked into a scratch KILN_HOME first (a minute or
so). Every unpack goes into a folder of its own on the store's file system, and all of
them are removed only at the end: on this machine kind, deleting a big tree slows the file
creation right after it, which would skew whichever side runs next.

Where the time goes: sha256 runs on the second core while tar extracts, so the ratio
depends on that core being free (run it on an idle machine, and with --home on tmpfs to
take the disk out). Tar reads the pipe in 1 MiB records: its default 10 KiB reads from a
pipe cost more than the hashing. splice(2) would save the copies but hand tar bytes that
were never hashed.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import EXAMPLES, KILN, Row, median, timed
from kiln import locks
from kiln.home import Home
from kiln.store import layer
from kiln.store.layout import CHUNK, Descriptor, Layout

NAME = "verified unpack (base layer)"
TARGET = 1.10


def base_layer(home: Path, image: str = "base") -> Descriptor:
    """The bottom layer of the newest version of ``image`` in the store."""
    layout = Layout(home / "oci")
    versions = [
        (int(ref.rpartition(":")[2]), descriptor)
        for ref, descriptor in layout.refs().items()
        if ref.rpartition(":")[0] == image and ref.rpartition(":")[2].isdigit()
    ]
    if not versions:
        raise SystemExit(f"no {image} image in {home}: bake examples/base.toml into it first")
    manifest = layout.read_json(max(versions, key=lambda v: v[0])[1].digest)
    return Descriptor.from_json(manifest["layers"][0])


def bake_base(scratch: Path) -> Path:
    examples = scratch / "examples"
    shutil.copytree(EXAMPLES, examples, symlinks=True)
    home = scratch / "home"
    timed([*KILN, "bake", str(examples / "base.toml")], {"KILN_HOME": str(home)})
    return home


def _warm(path: Path) -> None:
    """Read the blob once, so both sides find it in the page cache."""
    with path.open("rb", buffering=0) as handle:
        while handle.read(CHUNK):
            pass


@dataclass
class Sample:
    wall: float
    cpu: float  # this process and its children (tar), user + system


def _cpu() -> float:
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _kiln(layout: Layout, blob: Descriptor, dest: Path) -> Sample:
    cpu, start = _cpu(), time.perf_counter()
    layer.unpack(layout, blob, dest, "base layer")
    return Sample(time.perf_counter() - start, _cpu() - cpu)


def _tar(layout: Layout, blob: Descriptor, dest: Path) -> Sample:
    dest.mkdir()
    argv = layer.extract_argv(dest, str(layout.blob_path(blob.digest)))
    cpu, start = _cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return Sample(time.perf_counter() - start, _cpu() - cpu)


def measure(home: Path, runs: int = 3) -> tuple[Row, str]:
    """The row, and a line on CPU time (steadier than wall time on a busy machine)."""
    layout = Layout(home / "oci")
    blob = base_layer(home)
    _warm(layout.blob_path(blob.digest))
    ours: list[Sample] = []
    peer: list[Sample] = []
    # held like any scratch folder of a live kiln, so a 'kiln gc' meanwhile leaves it be
    work, held = locks.owned_dir(Home(home).tmp, "bench-verify-")
    try:
        for run in range(runs):
            if run % 2 == 0:
                ours.append(_kiln(layout, blob, work / f"kiln-{run}"))
                peer.append(_tar(layout, blob, work / f"tar-{run}"))
            else:
                peer.append(_tar(layout, blob, work / f"tar-{run}"))
                ours.append(_kiln(layout, blob, work / f"kiln-{run}"))
    finally:
        layer.remove_tree(work)
        held.release()
    kiln_s, peer_s = median([s.wall for s in ours]), median([s.wall for s in peer])
    row = Row(NAME, kiln_s, peer_s, "tar -x", "s", f"<= {TARGET:.2f}x", kiln_s <= TARGET * peer_s)
    kiln_cpu, peer_cpu = median([s.cpu for s in ours]), median([s.cpu for s in peer])
    best = min(s.wall for s in ours) / min(s.wall for s in peer)
    detail = (
        f"  {blob.size / 1e6:.0f} MB blob; median cpu time kiln {kiln_cpu:.3f} s, tar -x "
        f"{peer_cpu:.3f} s; best runs ratio {best:.2f}; wall kiln "
        f"{[round(s.wall, 3) for s in ours]} tar {[round(s.wall, 3) for s in peer]}"
    )
    return row, detail


def rows(home: Path | None = None, runs: int = 3) -> list[Row]:
    """The benchmark's rows, for this script or another one (bench/soak.py) to print.

    ``home`` is a KILN_HOME holding a ``base`` image; without one, base is baked into a
    scratch store that is removed afterwards.
    """
    return [row for row, _detail in _measured(home, runs)]


def _measured(home: Path | None, runs: int) -> list[tuple[Row, str]]:
    if home is not None:
        return [measure(home, runs)]
    with tempfile.TemporaryDirectory(prefix="kiln-bench-", dir="/var/tmp") as folder:
        return [measure(bake_base(Path(folder)), runs)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a KILN_HOME with a base image in it")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    found = _measured(args.home.absolute() if args.home else None, args.runs)
    if args.json:
        print(json.dumps([row.__dict__ for row, _detail in found], indent=2))
    else:
        for row, detail in found:
            print(row.render())
            print(detail)


if __name__ == "__main__":
    main()
