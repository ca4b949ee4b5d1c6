"""`kiln ps`, `stop`, `rm`, `exec` and `logs`: machines after their launch.

Stopping asks the machine's systemd to power off (SIGRTMIN+4 to its PID 1), waits for
systemd-nspawn to exit, and only then unmounts the overlay: unmounting it under a running
machine would propagate into the machine and break its shutdown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln import proc
from kiln.catalog import Catalog, Machine, events
from kiln.catalog.machines import live, machines
from kiln.errors import KilnError, NotFound
from kiln.home import Home
from kiln.machines import enter, leftovers, process
from kiln.machines.folder import Folder, State, load
from kiln.mounts import remove_tree
from kiln.times import iso

STOP_TIMEOUT = 30.0


class NotRunning(KilnError):
    """The machine exists but is not running."""


def running(state: State) -> bool:
    return process.running(state)


def _state_or_none(folder: Folder) -> State | None:
    try:
        return load(folder)
    except KilnError:  # a launch that did not finish, or a damaged state file
        return None


def ps(catalog: Catalog, include_removed: bool = False) -> list[dict[str, Any]]:
    with catalog.reading() as session:
        rows = machines(session, include_removed)
        out = []
        for row in rows:
            state = None if row.removed else _state_or_none(Folder(Path(row.folder)))
            if row.removed:
                status = "removed"
            elif state is None:
                status = "missing"
            else:
                status = "running" if running(state) else "stopped"
            out.append(
                {
                    "name": row.name,
                    "image": row.image_ref,
                    "digest": row.digest,
                    "state": status,
                    "network": (state.network or None) if state is not None else None,
                    "address": (state.address or None) if state is not None else None,
                    "ports": list(state.ports) if state is not None else [],
                    "created": iso(row.created),
                    "stopped": iso(row.stopped),
                    "removed": iso(row.removed),
                    "nspawn_pid": row.nspawn_pid,
                    "leader_pid": row.leader_pid,
                    "folder": row.folder,
                    "volumes": row.volume_map(),
                    "config": row.plain_config(),
                    "secrets": sorted(json.loads(row.secret_keys)),
                    "throwaway": row.throwaway,
                    # A/B (kiln update): the active slot, and the stopped fallback's image
                    "slot": state.slot if state is not None else None,
                    "tentative": state.tentative if state is not None else False,
                    "fallback": (
                        {k: state.fallback.get(k) for k in ("slot", "image", "digest")}
                        if state is not None and state.fallback
                        else None
                    ),
                }
            )
        return out


def _mark(catalog: Catalog, name: str, **changes: Any) -> None:
    """Set ``changes`` (stopped=, removed=) on the machine's rows, with the event."""
    kind = "machine_removed" if "removed" in changes else "machine_stopped"
    with catalog.session() as session:
        for row in live(session, name):
            if kind == "machine_removed" or row.stopped is None:  # not twice for one stop
                family, _colon, version = row.image_ref.partition(":")
                events.record(session, kind, family, int(version), row.digest, machine=name)
            for key, value in changes.items():
                setattr(row, key, value)


def halt(home: Home, folder: Folder, state: State, timeout: float = STOP_TIMEOUT) -> bool:
    """Power the machine off and unmount its overlay; True if it was running."""
    was_running = running(state)
    if was_running:
        if not process.send(state.leader, process.POWEROFF):
            process.send(state.nspawn, signal.SIGTERM)  # nspawn passes on its kill signal
        if not process.wait_gone(state.nspawn, timeout):
            process.send(state.leader, signal.SIGKILL)
            process.send(state.nspawn, signal.SIGKILL)
            if not process.wait_gone(state.nspawn, 10):
                raise KilnError(
                    f"machine {state.name} (systemd-nspawn pid {state.nspawn.pid}) "
                    "does not stop, even after SIGKILL",
                    hint="its overlay stays mounted; look at the process with ps",
                )
    leftovers.forget(home.id, state.name)
    if folder.root.is_mount():
        proc.run(["umount", str(folder.root)])
    return was_running


def force_halt(home: Home, folder: Folder, state: State | None) -> bool:
    """Kill the machine without a shutdown (kiln rm --force), then unmount its overlay;
    True if anything of it was running."""
    was_running = (state is not None and running(state)) or bool(process.nspawns_of(folder.root))
    left = process.kill_machine(state, folder.root)
    if left:
        raise KilnError(
            f"machine {folder.name}: processes {', '.join(map(str, left))} survive SIGKILL "
            "(stuck in the kernel, in state D)",
            hint="its overlay stays mounted; kiln rm --force again once they are gone",
        )
    leftovers.forget(home.id, folder.name)
    if folder.root.is_mount():
        proc.run(["umount", str(folder.root)])
    return was_running


def _refuse_unknown_nspawn(folder: Folder) -> None:
    """A machine whose state file is damaged may still run: never unmount under it."""
    pids = process.nspawns_of(folder.root)
    if pids:
        raise KilnError(
            f"machine {folder.name} has no readable state, but systemd-nspawn "
            f"(pid {', '.join(map(str, pids))}) still boots its root",
            hint=f"kiln rm --force {folder.name} kills it and removes the machine",
        )


def stop(home: Home, catalog: Catalog, name: str, timeout: float = STOP_TIMEOUT) -> dict[str, Any]:
    folder = Folder.of(home, name)
    state = load(folder)
    was_running = halt(home, folder, state, timeout)
    _mark(catalog, name, stopped=datetime.now(UTC))
    return {"name": name, "was_running": was_running}


@dataclass
class Removed:
    name: str
    was_running: bool
    kept: list[str]  # volume folders left in place
    removed_volumes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "was_running": self.was_running,
            "kept_volumes": self.kept,
            "removed_volumes": self.removed_volumes,
        }


def rm(
    home: Home, catalog: Catalog, name: str, with_volumes: bool = False, force: bool = False
) -> Removed:
    """Stop the machine if it runs, remove its folder and forget it; volumes stay unless
    ``with_volumes`` (folders given with --volume are never removed). ``force`` kills the
    machine instead of shutting it down (one that will not stop, or whose state is lost)."""
    folder = Folder.of(home, name)
    exists = folder.exists() or bool(_rows(catalog, name))
    leftover = folder.volumes.is_dir() and with_volumes  # volumes kept by an earlier rm
    if not exists and not leftover:
        hint = "'kiln ps' lists the machines"
        if folder.volumes.is_dir():
            hint = (
                f"its volumes are kept in {folder.volumes}; kiln rm --volumes {name} removes them"
            )
        raise NotFound(f"no machine named {name}", hint=hint)
    state = _state_or_none(folder) if folder.exists() else None
    if force:
        was_running = force_halt(home, folder, state)
    else:
        was_running = halt(home, folder, state) if state is not None else False
        if state is None:
            _refuse_unknown_nspawn(folder)
            leftovers.forget(home.id, name)
            if folder.root.is_mount():
                proc.run(["umount", str(folder.root)])  # a launch that died half-way
    removed_volumes: list[str] = []
    if folder.path.is_dir():
        for child in folder.path.iterdir():
            if child.name == folder.volumes.name and not with_volumes:
                continue
            if child.name == folder.volumes.name:
                removed_volumes = sorted(str(p) for p in child.iterdir())
            if child.is_dir() and not child.is_symlink():
                remove_tree(child)
            else:
                child.unlink()
        if not any(folder.path.iterdir()):
            folder.path.rmdir()
    kept = []
    if state is not None:
        for path, source in sorted(state.volumes.items()):
            if path not in state.managed_volumes or not with_volumes:
                kept.append(source)
    elif folder.volumes.is_dir():
        kept = sorted(str(p) for p in folder.volumes.iterdir())
    _mark(catalog, name, removed=datetime.now(UTC))
    return Removed(name, was_running, kept, removed_volumes)


def _rows(catalog: Catalog, name: str) -> Sequence[Machine]:
    with catalog.reading() as session:
        return live(session, name)


def running_state(home: Home, name: str) -> State:
    state = load(Folder.of(home, name))
    if not running(state):
        raise NotRunning(
            f"machine {name} is not running",
            hint=f"kiln logs {name} shows how it ended; kiln rm {name}, then kiln run again",
        )
    return state


def exec_argv(home: Home, name: str, command: Sequence[str]) -> list[str]:
    """The argv (nsenter's) that runs ``command`` inside the running machine; the caller
    becomes it, so the command gets this terminal, its exit code and its signals."""
    state = running_state(home, name)
    return enter.exec_argv(state.leader.pid, command, {"TERM": os.environ.get("TERM", "dumb")})


@dataclass(frozen=True)
class Logs:
    """What kiln logs shows: a journalctl to become (``argv``), or the console's text."""

    argv: list[str] | None = None
    text: str = ""


def logs(
    home: Home,
    name: str,
    *,
    unit: str | None = None,
    lines: int | None = None,
    follow: bool = False,
    console: bool = False,
) -> Logs:
    """The machine's journal, or its console log.

    A running machine's journal is read inside it; a stopped one's from its upper dir.
    """
    folder = Folder.of(home, name)
    state = load(folder)
    options = ["--no-pager"]
    if unit:
        options += ["--unit", unit]
    if lines is not None:
        options += ["--lines", str(lines)]
    if follow:
        options.append("--follow")
    if not console:
        if running(state):
            return Logs(enter.exec_argv(state.leader.pid, ["journalctl", *options], {}))
        journal = folder.upper / "var/log/journal"
        if journal.is_dir():
            journalctl = shutil.which("journalctl") or "/usr/bin/journalctl"
            return Logs([journalctl, f"--directory={journal}", *options])
    text = folder.console.read_text(errors="replace") if folder.console.exists() else ""
    return Logs(text=proc.tail(text, lines) if lines is not None else text)
