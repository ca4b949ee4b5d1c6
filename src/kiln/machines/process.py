"""The host processes that are a machine: systemd-nspawn and the machine's systemd.

A pid alone can be reused, so a process is named by pid and start time, and a recorded
one counts as alive only while both match in this boot of the host. A zombie (an exited
nspawn that nobody reaped) is not alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from kiln.machines.folder import Proc, State

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


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def running(state: State) -> bool:
    """The machine's nspawn still runs (in this boot of the host)."""
    return state.boot_id == boot_id() and alive(state.nspawn)


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


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def nspawns_of(root: Path) -> list[int]:
    """The systemd-nspawn processes booting ``root``, found by their command line (for a
    machine whose state file is damaged or names other processes)."""
    want = f"--directory={root}".encode()
    found = []
    for pid in _pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"systemd-nspawn" and want in argv:
            found.append(pid)
    return found


def pid_namespace(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def kill_machine(state: State | None, root: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL a machine without asking it: its systemd (which takes every process of its
    PID namespace with it), anything else left in that namespace, and its nspawn.

    Returns the pids that are still there after ``timeout`` (stuck in the kernel)."""
    nspawns = set(nspawns_of(root))
    leaders = set()
    if state is not None:
        if alive(state.nspawn):
            nspawns.add(state.nspawn.pid)
        if alive(state.leader):
            leaders.add(state.leader.pid)
    for pid in nspawns:
        leaders.update(children(pid))
    own = pid_namespace(os.getpid())
    spaces = {ns for ns in map(pid_namespace, leaders) if ns is not None and ns != own}
    members = [pid for pid in _pids() if spaces and pid_namespace(pid) in spaces]
    targets = [*sorted(leaders), *members, *sorted(nspawns)]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in dict.fromkeys(targets) if _lives(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _lives(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")
