"""The host processes that are a machine: systemd-nspawn and the machine's systemd.

A pid alone can be reused, so a process is named by pid and start time, and a recorded
one counts as alive only while both match in this boot of the host. A zombie (an exited
nspawn that nobody reaped) is not alive.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kiln.machines.folder import Proc

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def identify(pid: int) -> Proc | None:
    fields = _stat(pid)
    if fields is None:
        return None
    return Proc(pid, int(fields[19]))  # field 22 of stat: starttime


def alive(proc: Proc) -> bool:
    fields = _stat(proc.pid)
    return fields is not None and fields[0] not in ("Z", "X") and int(fields[19]) == proc.start


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def leader(nspawn_pid: int) -> Proc | None:
    """The machine's PID 1 once it runs systemd: nspawn's child, after its exec."""
    for child in children(nspawn_pid):
        if comm(child) == "systemd":
            return identify(child)
    return None


def send(proc: Proc, sig: int) -> bool:
    """Signal a recorded process if it is still that process; False if it is gone."""
    if not alive(proc):
        return False
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(proc: Proc, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


POWEROFF = signal.SIGRTMIN + 4  # systemd as PID 1: start poweroff.target
