"""Waiting for a machine: systemd reports ``running``, then the image's health check passes.

An ``http`` check runs the host's curl inside the machine's network namespace, so
``http://127.0.0.1/`` is the machine's own loopback; a ``command`` check runs inside the
machine. Both are polled until the contract's timeout.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import BadInput, KilnError
from kiln.machines import enter, notify, process
from kiln.machines.contract import Health
from kiln.machines.folder import State

POLL = 0.02
READY_POLL = 0.1  # how often a boot waiting for READY=1 checks that nspawn still runs
CHECK_TIMEOUT = 2.0  # for one attempt; the contract's timeout bounds them all


class NotReady(KilnError):
    """A machine did not boot, or did not become healthy, in time."""


@dataclass(frozen=True)
class Result:
    ok: bool
    check: str  # what was checked
    detail: str  # the last answer: HTTP status, exit code and output
    attempts: int
    seconds: float  # from the start of the wait

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "check": self.check,
            "detail": self.detail,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
        }


def console_tail(console: Path, lines: int = 15) -> str:
    try:
        return proc.tail(console.read_text(errors="replace"), lines)
    except OSError:
        return ""


def _gone(state: State, console: Path) -> NotReady:
    return NotReady(
        f"machine {state.name} stopped while booting\n--- last lines of its console ---\n"
        + console_tail(console),
        hint=f"the whole console is in {console}",
    )


def _not_booted(state: State, timeout: float) -> NotReady:
    return NotReady(
        f"machine {state.name} did not finish booting in {timeout:.0f}s",
        hint=f"see what it is waiting for: kiln exec {state.name} -- systemctl list-jobs",
    )


def _wait_ready(
    state: State, console: Path, channel: notify.Channel, deadline: float, timeout: float
) -> None:
    """Until nspawn passes on systemd's READY=1: no process is started meanwhile."""
    while not channel.ready:
        if not process.alive(state.nspawn):
            raise _gone(state, console)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _not_booted(state, timeout)
        channel.receive(min(READY_POLL, remaining))
    channel.close()


def wait_running(
    state: State, console: Path, timeout: float, channel: notify.Channel | None = None
) -> str:
    """Block until systemd in the machine has finished booting; its state is 'running'.
    ``channel``: the nspawn reports of a machine this process booted, which say when the
    boot is over; then one question to systemd tells 'running' from 'degraded'."""
    deadline = time.monotonic() + timeout
    if channel is not None:
        _wait_ready(state, console, channel, deadline, timeout)
    leader = state.leader.pid
    while True:
        if not process.alive(state.nspawn):
            raise _gone(state, console)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _not_booted(state, timeout)
        result = enter.run(leader, ["systemctl", "is-system-running", "--wait"], timeout=remaining)
        answer = result.stdout.decode(errors="replace").strip().splitlines()
        status = answer[-1] if answer else ""
        if status == "running":
            return status
        if status in ("degraded", "maintenance"):
            failed = enter.run(
                leader, ["systemctl", "list-units", "--failed", "--plain", "--no-legend"]
            ).stdout.decode(errors="replace")
            units = [line.split()[0] for line in failed.splitlines() if line.strip()]
            raise NotReady(
                f"machine {state.name} booted {status}: failed units: {', '.join(units) or '?'}",
                hint=f"kiln logs {state.name} shows the journal; the machine is left running",
            )
        time.sleep(POLL)  # the manager's bus is not up yet, or it is still starting


def check_once(leader: int, health: Health, timeout: float) -> tuple[bool, str]:
    limit = max(min(CHECK_TIMEOUT, timeout), 0.2)
    if health.http is not None:
        curl = [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--output",
            "/dev/null",
            "--max-time",
            f"{limit:.2f}",
            "--write-out",
            "%{http_code}",
            health.http,
        ]
        result = proc.run(enter.network_argv(leader, curl), check=False)
        text = " ".join(result.stdout.decode(errors="replace").split())
        if result.returncode == 0:
            return True, f"HTTP {text}"
        return False, text or f"curl exit code {result.returncode}"
    assert health.command is not None
    result = enter.shell(leader, health.command, timeout=limit)
    if result.returncode == 0:
        return True, "exit code 0"  # its output explains a failure; a pass needs none
    output = proc.tail(result.stdout.decode(errors="replace"), 5)
    detail = f"exit code {result.returncode}" + (f": {output}" if output else "")
    return result.returncode == 0, detail


def check_tools(health: Health | None) -> None:
    """Before a launch that will wait: what the check needs on the host is there."""
    if health is not None and health.http is not None and shutil.which("curl") is None:
        raise BadInput("the http health check needs curl on the host", hint="run scripts/setup")


def wait_healthy(state: State, health: Health, console: Path, started: float) -> Result:
    """Poll the check until it passes or the contract's timeout has passed."""
    check_tools(health)
    deadline = time.monotonic() + health.timeout
    attempts = 0
    while True:
        attempts += 1
        ok, detail = check_once(state.leader.pid, health, deadline - time.monotonic())
        if ok:
            return Result(True, health.describe(), detail, attempts, time.monotonic() - started)
        if not process.alive(state.nspawn):
            raise _gone(state, console)
        if time.monotonic() >= deadline:
            return Result(False, health.describe(), detail, attempts, time.monotonic() - started)
        time.sleep(POLL * 2.5)
