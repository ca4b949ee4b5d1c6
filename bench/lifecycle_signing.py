"""What the trust policy costs `kiln run`, each figure against a peer in the same run.

    sudo .venv/bin/python -m bench.lifecycle_signing [--home KILN_HOME] [--runs N] [--json]

1. The trust check with no policy file (kiln.app.signing.enforce_trust, in-process),
   against the same check under a policy that requires signatures. Target: < 1 ms: with
   no policy requiring signatures nothing is imported and only the policy file is read.
2. Hashing the layers as verify does (kiln.lifecycle.signing.check_image on base: the
   store's gzip blobs, stream-hashed) in MB/s, against `openssl dgst -sha256` on the
   same blobs.
   Target: >= 0.8x.
3. `kiln run base --wait` (the whole process, time to healthy) under a policy requiring
   signatures, against no policy. Target: at most 0.15 s more (base's layer hashed once,
   the policy loaded, one ECDSA verification).

The store used is a scratch copy of ``--home`` (blobs and catalog copied, unpacked layers
hard-linked; base is signed there); without --home, examples/base.toml is baked first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import EXAMPLES, KILN, Row, median, report, timed

PASSWORD = "bench password"
ADDED_TARGET = 0.15


def _copy(source: Path, scratch: Path) -> Path:
    home = scratch / "home"
    home.mkdir()
    for name in ("oci", "catalog.db"):
        subprocess.run(["cp", "-a", "--", str(source / name), str(home)], check=True)
    subprocess.run(["cp", "-al", "--", str(source / "layers"), str(home)], check=True)
    (home / "tmp").mkdir()
    return home


def _env(home: Path, policy: Path | None) -> dict[str, str]:
    env = {**os.environ, "KILN_HOME": str(home), "KILN_KEY_PASSWORD": PASSWORD}
    env.pop("KILN_POLICY", None)
    if policy is not None:
        env["KILN_POLICY"] = str(policy)
    return env


def _kiln(home: Path, *args: str, policy: Path | None = None) -> str:
    done = subprocess.run(
        [*KILN, *args], env=_env(home, policy), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def _check_ms(home: Path, policy: Path | None, runs: int) -> float:
    """The in-process trust check, in ms (the median over ``runs`` fresh processes)."""
    script = (
        "import time\n"
        "from kiln.app import machines, resolve  # what kiln run has loaded by then\n"
        "from kiln.app.signing import enforce_trust\n"
        "from kiln.app.workspace import Workspace\n"
        "w = Workspace(); row = resolve.image(w, 'base'); w.layout\n"
        "start = time.perf_counter(); enforce_trust(w, row)\n"
        "print((time.perf_counter() - start) * 1000)\n"
    )
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=_env(home, policy),
            capture_output=True,
            text=True,
            check=True,
            cwd=home,
        )
        times.append(float(done.stdout))
    return median(times)


def _hash_rates(home: Path, runs: int) -> tuple[float, float]:
    """MB/s of check_image over base and of ``openssl dgst -sha256`` (SHA-NI, unlike
    Debian's sha256sum) over the same blobs."""
    from kiln.lifecycle import signing
    from kiln.store.layout import Layout

    layout = Layout(home / "oci", tmp=home / "tmp")
    digest = json.loads(_kiln(home, "inspect", "base", "--json"))["digest"]
    manifest = layout.read_json(digest)
    paths = [str(layout.blob_path(layer["digest"])) for layer in manifest["layers"]]
    size = sum(Path(path).stat().st_size for path in paths) / 1e6
    timed(["cat", *paths])  # both sides read from the page cache
    ours, theirs = [], []
    for _ in range(runs):
        start = time.perf_counter()
        assert not signing.check_image(layout, digest)
        ours.append(size / (time.perf_counter() - start))
        theirs.append(size / timed(["openssl", "dgst", "-sha256", *paths]))
    return median(ours), median(theirs)


def _boot(home: Path, name: str, policy: Path | None) -> float:
    start = time.perf_counter()
    _kiln(home, "run", "base", "--name", name, "--wait", policy=policy)
    seconds = time.perf_counter() - start
    _kiln(home, "rm", "--force", "--volumes", name)
    return seconds


def measure(source: Path, runs: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-", dir="/var/tmp") as folder:
        scratch = Path(folder)
        home = _copy(source, scratch)
        made = json.loads(
            _kiln(home, "key", "generate", "--output", str(scratch / "release"), "--json")
        )
        _kiln(home, "sign", "base", "--key", made["private_key"])
        policy = scratch / "kiln.toml"
        policy.write_text(f'[trust]\nkeys = ["{made["public_key"]}"]\nrequire_signatures = true\n')
        none_ms, policy_ms = _check_ms(home, None, runs), _check_ms(home, policy, runs)
        ours, theirs = _hash_rates(home, runs)
        _boot(home, "bench-warm", None)  # pages the layers in, as a running host has them
        plain: list[float] = []
        required: list[float] = []
        for run in range(runs):
            order = (None, policy) if run % 2 == 0 else (policy, None)
            for which in order:
                seconds = _boot(home, f"bench-{run}-{'p' if which else 'n'}", which)
                (required if which else plain).append(seconds)
    run_plain, run_required = median(plain), median(required)
    return [
        Row(
            "trust check, no policy (ms)",
            none_ms,
            policy_ms,
            "requiring",
            "ms",
            "< 1 ms",
            none_ms < 1.0,
        ),
        Row(
            "verify: layer hashing",
            ours,
            theirs,
            "openssl",
            "MB/s",
            ">= 0.8x",
            ours >= 0.8 * theirs,
        ),
        Row(
            "kiln run base, signatures required",
            run_required,
            run_plain,
            "no policy",
            "s",
            f"+<= {ADDED_TARGET} s",
            run_required - run_plain <= ADDED_TARGET,
        ),
    ]


def rows(home: Path | None = None, runs: int = 5) -> list[Row]:
    """The rows for this script or bench/lifecycle.py; ``home`` holds a base image, else
    one is baked into a scratch store first."""
    if home is not None:
        return measure(home, runs)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-", dir="/var/tmp") as folder:
        examples = Path(folder) / "examples"
        shutil.copytree(EXAMPLES, examples, symlinks=True)
        baked = Path(folder) / "home"
        timed([*KILN, "bake", str(examples / "base.toml")], {"KILN_HOME": str(baked)})
        return measure(baked, runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="a KILN_HOME with a base image in it")
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (median)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    found = rows(args.home.absolute() if args.home else None, args.runs)
    report(found, args.json)
    if not all(row.ok for row in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
