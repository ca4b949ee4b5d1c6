"""Scale-out benchmark: moving images through a registry, against plain skopeo.

    sudo .venv/bin/python -m bench.scale [--home KILN_HOME] [--runs N] [--only SECTION]
                                         [--bulk-mib N]

transfer: ``kiln push`` of an image into an empty registry against ``skopeo copy
--preserve-digests`` of the same image into another empty one, then ``kiln pull`` into an
empty KILN_HOME against ``skopeo copy`` of the same image into an empty OCI folder. kiln
moves more (the parent, referrers, signature), hashes every blob it takes in and records
the catalog rows; the ratio is skopeo's seconds over kiln's, so 1.0 is the same speed,
median against median, the sides taking turns run by run. A pull goes into a KILN_HOME
that holds no image but exists (its catalog made, as on a host that runs kiln), skopeo's
into an empty folder. The image is ``bulk``: tiny and
a layer of --bulk-mib MiB of random bytes (default 1024; baked once into the home, not
timed), so throughput is measured on bulk data. Target: >= 0.9 each way.
transfer-small: the same with web, whose ~95 MiB take skopeo well under a second there:
kiln's fixed cost per image (interpreter, catalog, attachments) shows (no target).

A KILN_HOME with web baked (``--home``, kept), else a fresh one under /var/tmp with
examples/ baked first (not timed). Registries and pulled homes are throw-away, in
/dev/shm (``--on-disk``: /var/tmp): on this machine kind a disk's write-back made single
runs of the same skopeo copy vary from 2.4 to 5.4 s, which buried both sides' own costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import scaleworkers
from bench.common import EXAMPLES, KILN, kiln, median, timed
from bench.registry import serving

TRANSFER_TARGET = 0.9


def _newest(home: Path, name: str) -> str:
    listed = json.loads(kiln(home, "images", "--json").stdout)
    newest = max((i for i in listed if i["name"] == name), key=lambda i: int(i["version"]))
    return str(newest["ref"])


def _size(home: Path, ref: str) -> int:
    manifest = json.loads(kiln(home, "inspect", ref, "--json").stdout)
    return sum(int(layer["size"]) for layer in manifest["layers"])


BULK = """\
[image]
name = "bulk"
parent = "tiny"
description = "bench.scale: tiny and {mib} MiB of random bytes"

[[steps]]
run = "dd if=/dev/urandom of=/bulk bs=1048576 count={mib} 2>/dev/null"
shell = ["/bin/busybox", "sh", "-c"]
"""


def bulk(home: Path, mib: int, scratch: Path) -> str:
    """The bulk image of ``mib`` MiB, baked into ``home`` unless it is there."""
    listed = json.loads(kiln(home, "images", "--json").stdout)
    for image in listed:
        if image["name"] == "bulk" and abs(image["size"] - (mib << 20)) < (1 << 20):
            return str(image["ref"])
    if not any(image["name"] == "tiny" for image in listed):
        kiln(home, "bake", str(EXAMPLES / "tiny.toml"))
    recipe = scratch / "bulk.toml"
    recipe.write_text(BULK.format(mib=mib))
    return str(json.loads(kiln(home, "bake", str(recipe), "--json").stdout)["ref"])


def transfer(home: Path, runs: int, scratch: Path, ref: str, target: bool = True) -> list[str]:
    """Both sides' pushes and pulls of ``ref``, taking turns; the lines to print."""
    size = _size(home, ref)
    name, _, tag = ref.partition(":")
    env = {"KILN_HOME": str(home)}
    push_kiln: list[float] = []
    push_peer: list[float] = []
    pull_kiln: list[float] = []
    pull_peer: list[float] = []
    for run in range(runs):
        folder = scratch / f"run-{run}"
        with serving(folder / "kiln") as ours, serving(folder / "peer") as theirs:
            kiln_push = [*KILN, "push", ref, f"docker://{ours}/kiln/{name}", "--insecure"]
            peer_push = [
                "skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{home / 'oci'}:{ref}", f"docker://{theirs}/peer/{name}:{tag}",
            ]  # fmt: skip
            kiln_pull = [*KILN, "pull", f"docker://{ours}/kiln/{name}:{tag}", "--insecure"]
            peer_pull = [
                "skopeo", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{theirs}/peer/{name}:{tag}", f"oci:{folder / 'peer-oci'}:{name}",
            ]  # fmt: skip
            pulled = {"KILN_HOME": str(folder / "pulled")}
            kiln(folder / "pulled", "images")  # a host's home exists: its catalog is made
            sides = [
                (push_kiln, kiln_push, env), (push_peer, peer_push, None),
                (pull_kiln, kiln_pull, pulled), (pull_peer, peer_pull, None),
            ]  # fmt: skip
            if run % 2:  # each side goes first every other run
                sides = [sides[1], sides[0], sides[3], sides[2]]
            for into, argv, extra in sides:
                subprocess.run(["sync"], check=True)  # the last side's writes are not this one's
                into.append(timed(argv, extra))
        shutil.rmtree(folder)
    lines = []
    mib = size / (1 << 20)
    for what, ours_s, theirs_s in (
        ("push", push_kiln, push_peer),
        ("pull", pull_kiln, pull_peer),
    ):
        k, p = median(ours_s), median(theirs_s)
        ratio = p / k
        state = "ok" if ratio >= TRANSFER_TARGET else "MISSED"
        verdict = f"target >= {TRANSFER_TARGET}  {state}" if target else "(no target)"
        lines.append(
            f"transfer: {what} {ref} ({mib:.1f} MiB), median of {runs}: kiln {k:.3f} s "
            f"({mib / k:.0f} MiB/s), skopeo copy {p:.3f} s ({mib / p:.0f} MiB/s); "
            f"ratio {ratio:.2f}  {verdict}  "
            f"(kiln runs: {' '.join(f'{x:.2f}' for x in ours_s)}; "
            f"skopeo runs: {' '.join(f'{x:.2f}' for x in theirs_s)})"
        )
    return lines


def _fast(args: argparse.Namespace, scratch: Path) -> Path:
    """Where the transfers write: /dev/shm unless --on-disk (removed with ``scratch``)."""
    if args.on_disk or not Path("/dev/shm").is_dir():
        return scratch
    if (scratch / "shm").is_symlink():
        return (scratch / "shm").resolve()
    folder = Path(tempfile.mkdtemp(prefix="kiln-bench-scale-", dir="/dev/shm"))
    (scratch / "shm").symlink_to(folder)
    return folder


SECTIONS: dict[str, Callable[[argparse.Namespace, Path, Path], list[str]]] = {
    "transfer": lambda args, home, scratch: transfer(
        home, args.runs, _fast(args, scratch), bulk(home, args.bulk_mib, scratch)
    ),
    "transfer-small": lambda args, home, scratch: transfer(
        home, args.runs, _fast(args, scratch), _newest(home, "web"), target=False
    ),
    "propagate": lambda args, home, scratch: scaleworkers.propagate(
        home, _newest(home, "base"), scratch, args.children
    ),
    "latency": lambda args, home, scratch: scaleworkers.latency(home, "", scratch),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a KILN_HOME with web baked (kept)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--bulk-mib", type=int, default=1024)
    parser.add_argument("--children", type=int, default=40, help="of the propagation")
    parser.add_argument("--on-disk", action="store_true", help="transfers under /var/tmp")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-scale-", dir="/var/tmp"))
    try:
        home = args.home
        if home is None:
            home = scratch / "home"
            kiln(home, "bake", str(EXAMPLES))
        for name in args.only or list(SECTIONS):
            for line in SECTIONS[name](args, home, scratch):
                print(line, flush=True)
    finally:
        shm = scratch / "shm"
        if shm.is_symlink():
            shutil.rmtree(shm.resolve(), ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
