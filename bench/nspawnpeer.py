"""The floor under one machine's time to healthy: web booted by hand with systemd-nspawn.

    sudo .venv/bin/python -m bench.nspawnpeer [--home KILN_HOME] [--ref web:N] [--runs N]

What a user of plain systemd-nspawn does to boot web's image as kiln boots its machines,
and nothing more: an overlay mount of the image's layers over a fresh upper dir, web's
config file and its secret as a credential, a private network (loopback only), a cgroup
of its own, ``--notify-ready=yes`` with a notify socket to learn when systemd has booted,
then web's health check (curl in the machine's network namespace) until it passes. Timed
from the mount to the passed check, inside this process: no interpreter start, no
catalog, no network namespace with an address, no record. bench.fleet prints kiln's
single boot against it, both measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import median
from kiln import cgroups

TIMEOUT = 30.0
CONFIG_ENV = 'SITE_TITLE="Fleet bench"\n'
TOKEN = "bench-token-not-a-secret"


def layers_of(home: Path, ref: str) -> list[Path]:
    """The image's unpacked layers, lowest first (read through kiln, not timed)."""
    from kiln.app import resolve
    from kiln.app.workspace import opened
    from kiln.home import Home

    with opened(Home(home)) as workspace:
        _row, image = resolve.image_and_bytes(workspace, ref)
        return list(image.layer_dirs)


def _ready(sock: socket.socket, deadline: float) -> int:
    """The leader's pid once nspawn has passed on READY=1."""
    leader = 0
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        fields = dict(line.partition("=")[::2] for line in sock.recv(4096).decode().splitlines())
        leader = int(fields.get("X_NSPAWN_LEADER_PID", leader) or 0)
        if fields.get("READY") == "1":
            return leader


def boot_once(layers: list[Path], work: Path, n: int) -> float:
    upper, scratch, root = work / "upper", work / "work", work / "root"
    for folder in (upper, scratch, root):
        folder.mkdir(mode=0o755)
    config, token = work / "config.env", work / "token"
    config.write_text(CONFIG_ENV)
    token.write_text(TOKEN)
    token.chmod(0o600)
    name = f"kiln-bench-peer-{os.getpid()}-{n}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    lower = ":".join(str(layer) for layer in reversed(layers))
    options = f"lowerdir={lower},upperdir={upper},workdir={scratch}"
    argv = [
        "systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "--boot",
        f"--directory={root}", f"--machine={name}", "--private-network",
        "--notify-ready=yes", "--console=read-only", "--link-journal=no",
        "--timezone=off", "--resolv-conf=off", "--kill-signal=SIGRTMIN+4",
        f"--bind-ro={config}:/run/kiln/config.env",
        f"--load-credential=api_token:{token}",
    ]  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": "@" + name}
    child: subprocess.Popen[bytes] | None = None
    begin = time.perf_counter()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], check=True)
    try:
        child = subprocess.Popen(
            cgroups.enter(name, argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + TIMEOUT
        leader = _ready(sock, deadline)
        curl = ["nsenter", "-t", str(leader), "-n", "curl", "-sf", "-o", "/dev/null"]
        while subprocess.run([*curl, "http://127.0.0.1/"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the machine booted by hand never passed its check")
            time.sleep(0.02)
        return time.perf_counter() - begin
    finally:
        sock.close()
        if child is not None:
            child.terminate()  # nspawn powers the machine off
            child.wait(30)
        subprocess.run(["umount", str(root)], check=False)
        cgroups.remove(name)


def boots(home: Path, ref: str, runs: int) -> list[float]:
    layers = layers_of(home, ref)
    seconds = []
    for n in range(runs + 1):  # the first one pages the layers in, as bench.fleet's does
        with tempfile.TemporaryDirectory(prefix="kiln-bench-peer-", dir="/var/tmp") as work:
            took = boot_once(layers, Path(work), n)
        if n:
            seconds.append(took)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path("/var/lib/kiln"))
    parser.add_argument("--ref", default="web")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = boots(args.home, args.ref, args.runs)
    print(
        f"web booted by hand with systemd-nspawn to healthy, median of {len(runs)}: "
        f"{median(runs):.3f} s (runs: {' '.join(f'{s:.3f}' for s in runs)})"
    )


if __name__ == "__main__":
    main()
