"""`kiln update`: the steps of an A/B update and of a rollback, on kiln.machines.slots.

An update: halt the machine, drop the older fallback, stage the new slot, store the active
one as the fallback, make the staged one active, point the catalog at it, boot it and
prove it (its health check passes within the deadline, then holds for the mark-good
window). Any failure after the halt undoes it (:func:`_undo`) and boots the old slot
again. A rollback parks the active slot, makes the fallback active, stores the parked one
as the fallback, and boots. Each step is written to switch.json before it is taken; the
steps that move files find what is done already, so a step is taken again safely after
a crash.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kiln.errors import KilnError
from kiln.home import Home
from kiln.machines import config, health, launch, process, slots
from kiln.machines.contract import Health
from kiln.machines.folder import Folder, load
from kiln.machines.recording import Opener
from kiln.machines.slots import ITEMS, Busy, Slot, Switch, fallback_dir, held, next_dir, pending
from kiln.store.stored import StoredImage

UPDATE = (
    "halt",
    "drop",
    "stage",
    "store-upper",
    "store-config",
    "state",
    "activate-config",
    "activate-upper",
    "catalog",
    "boot",
    "prove",
)
MOVED = UPDATE.index("store-upper")  # from here on the old slot may be in fallback/
ROLLBACK = (
    "halt",
    "park-upper",
    "park-config",
    "state",
    "activate-config",
    "activate-upper",
    "store-upper",
    "store-config",
    "catalog",
    "boot",
    "prove",
)
UNDO = ("halt", "park", "state", "activate", "tidy", "catalog")
HOLD_POLL = 0.1
BOOT_POLL = 0.05

Starter = Callable[[launch.StartRequest], launch.Launched]  # kiln start, as kiln.app does it


def boot(start: Starter, name: str, secret_values: Mapping[str, str]) -> launch.Launched:
    """kiln start of the active slot (``start`` is kiln.app's, with the machine's network),
    which takes secrets as kiln start does (--set KEY=@FILE): each is handed over in an
    anonymous memory file (memfd), never on disk."""
    fds = []
    try:
        sets = []
        for key, value in sorted(secret_values.items()):
            fd = os.memfd_create(f"kiln-{key}", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, value.encode())
            sets.append(f"{key}=@/proc/self/fd/{fd}")
        return start(launch.StartRequest(name, tuple(sets)))
    finally:
        for fd in fds:
            os.close(fd)


@dataclass(frozen=True)
class Proof:
    """How a freshly booted slot did: healthy, and held for the window, or why not."""

    ok: bool
    detail: str  # the last answer of the check, or why the slot failed
    healthy_seconds: float | None = None  # from the boot to the first pass
    held_seconds: float = 0.0  # how long the check then passed without a break

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "detail": self.detail,
            "healthy_seconds": (
                round(self.healthy_seconds, 3) if self.healthy_seconds is not None else None
            ),
            "held_seconds": round(self.held_seconds, 3),
        }


def prove(
    launched: launch.Launched, check: Health | None, good_after: float, deadline: float
) -> Proof:
    """Until the check has passed without a break for ``good_after`` seconds. The first pass
    must come within ``deadline`` of the boot; a failed check after it fails the slot, as
    does a machine that stops. With no health check, a running systemd is the check."""
    state, console = launched.state, launched.folder.console
    end = launched.started + deadline
    try:
        health.wait_running(state, console, max(end - time.monotonic(), 0.1), launched.channel)
    except health.NotReady as exc:
        return Proof(False, exc.message.splitlines()[0])
    first: float | None = None
    what = check.describe() if check is not None else "systemd running"
    while True:
        if not process.alive(state.nspawn):
            return Proof(False, f"machine {state.name} stopped", _since(first, launched))
        if check is None:
            ok, detail = True, "running"
        else:
            left = end - time.monotonic() if first is None else health.CHECK_TIMEOUT
            ok, detail = health.check_once(state.leader.pid, check, left)
        now = time.monotonic()
        if ok:
            first = now if first is None else first
            if now - first >= good_after:
                return Proof(True, f"{what}: {detail}", first - launched.started, now - first)
            time.sleep(HOLD_POLL)
            continue
        if first is not None:
            return Proof(
                False,
                f"{what} failed after {now - first:.1f}s healthy: {detail}",
                first - launched.started,
                now - first,
            )
        if now >= end:
            return Proof(False, f"not healthy within {deadline:g}s: {what}: {detail}")
        time.sleep(BOOT_POLL)


def _since(first: float | None, launched: launch.Launched) -> float | None:
    return None if first is None else first - launched.started


def settle(launched: launch.Launched, deadline: float) -> Proof:
    """A slot booted back (an undo, a rollback): healthy once, within ``deadline``."""
    return prove(launched, launched.contract.health, 0.0, deadline)


@dataclass
class Outcome:
    """What an update or a rollback did, for kiln update to show."""

    name: str
    op: str  # "update" or "rollback"
    ok: bool
    origin: Slot
    target: Slot
    active: Slot
    fallback: Slot | None
    proof: Proof | None = None  # the target's (an update's window, a rollback's first pass)
    reason: str = ""  # why an update was switched back
    back: Proof | None = None  # the slot switched back to, once booted again
    back_error: str = ""  # why it did not boot again (it stays stopped)
    resumed: bool = False  # a switch a killed kiln left, finished

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "ok": self.ok,
            "from": self.origin.brief(),
            "to": self.target.brief(),
            "active": self.active.brief(),
            "fallback": self.fallback.brief() if self.fallback is not None else None,
            "proof": self.proof.to_json() if self.proof is not None else None,
            "reason": self.reason or None,
            "back": self.back.to_json() if self.back is not None else None,
            "back_error": self.back_error or None,
            "resumed": self.resumed,
        }


def update(
    home: Home,
    catalog: Opener | None,
    start: Starter,
    name: str,
    origin: Slot,
    origin_image: StoredImage,
    image: StoredImage,
    image_id: int,
    values: config.Values,
    good_after: float,
    deadline: float,
) -> Outcome:
    """Boot ``image`` as the other slot of the machine running ``origin``; keep it if its
    check holds for ``good_after`` seconds (first passing within ``deadline``), else switch
    back. The older fallback is removed first: a machine has at most two slots."""
    folder = Folder.of(home, name)
    target = Slot(
        slots.other(origin.slot),
        image.ref,
        image.digest,
        image_id,
        tuple(str(d) for d in image.layer_dirs),
        dict(values.plain),
        tuple(sorted(values.secrets)),
    )
    with held(folder):
        slots.refuse_pending(folder)
        switch = Switch("update", "halt", origin, target)
        proof: Proof | None = None
        reason = ""
        try:
            slots.at(folder, switch, "halt")
            switch.was_running = slots.halt(home, folder)
            slots.at(folder, switch, "drop")
            slots.set_state(folder, origin, None, tentative=False)
            slots.remove(fallback_dir(folder))
            slots.at(folder, switch, "stage")
            slots.stage(folder, image, values)
            stored, staged = fallback_dir(folder), next_dir(folder)
            slots.at(folder, switch, "store-upper")
            slots.move(folder.upper, stored / "upper")
            slots.at(folder, switch, "store-config")
            slots.move(folder.config, stored / "config")
            slots.at(folder, switch, "state")
            slots.set_state(folder, target, origin, tentative=True)
            slots.at(folder, switch, "activate-config")
            slots.move(staged / "config", folder.config)
            slots.at(folder, switch, "activate-upper")
            slots.move(staged / "upper", folder.upper)
            slots.remove(staged)
            slots.at(folder, switch, "catalog")
            slots.repoint_catalog(home, catalog, name, target)
            slots.at(folder, switch, "boot")
            launched = boot(start, name, values.secrets)
            slots.at(folder, switch, "prove")
            proof = prove(launched, launched.contract.health, good_after, deadline)
            reason = "" if proof.ok else proof.detail
        except Exception as exc:
            if switch.step == "halt":  # nothing moved: the machine is as it was
                slots.done(folder)
                raise
            reason = exc.message.splitlines()[0] if isinstance(exc, KilnError) else repr(exc)
        if proof is not None and proof.ok:
            slots.set_state(folder, target, origin, tentative=False)
            slots.done(folder)
            return Outcome(name, "update", True, origin, target, target, origin, proof)
        switch.reason = reason
        secrets_back = {k: v for k, v in values.secrets.items() if k in origin.secret_keys}
        outcome = _undo(home, catalog, start, folder, switch, origin_image, secrets_back)
        outcome.proof = proof
        return outcome


def _undo(
    home: Home,
    catalog: Opener | None,
    start: Starter,
    folder: Folder,
    switch: Switch,
    origin_image: StoredImage,
    secret_values: Mapping[str, str],
) -> Outcome:
    """Put the slot the update started from back, from whatever step the update reached
    (taken again after a crash: every step finds what is done and does the rest), then
    boot it if it ran."""
    reached = UPDATE.index(switch.step)
    moved, dropped = reached >= MOVED, reached >= UPDATE.index("drop")
    origin = dataclasses.replace(
        switch.origin, layers=tuple(str(d) for d in origin_image.layer_dirs)
    )
    stored, parked = fallback_dir(folder), next_dir(folder)
    state = load(folder)
    kept = None if dropped or state.fallback is None else Slot.from_json(state.fallback)
    first = UNDO.index(switch.undo) if switch.undo else 0
    for step in UNDO[first:]:
        slots.at(folder, switch, step, undo=True)
        if step == "halt":
            slots.halt(home, folder)
        elif step == "park" and moved:
            for item in ITEMS:  # what is active while the old slot waits in fallback/ is new
                if (stored / item).exists() and (folder.path / item).exists():
                    slots.remove(parked / item)
                    slots.move(folder.path / item, parked / item)
        elif step == "state":
            slots.set_state(folder, origin, kept, tentative=False)
        elif step == "activate" and moved:
            for item in reversed(ITEMS):  # config first: an upper/ always has its config
                if (stored / item).exists():
                    slots.move(stored / item, folder.path / item)
        elif step == "tidy":
            slots.remove(parked)
            if dropped:
                slots.remove(stored)
        elif step == "catalog":
            slots.repoint_catalog(home, catalog, folder.name, origin)
    slots.done(folder)
    outcome = Outcome(
        folder.name, "update", False, origin, switch.target, origin, kept, reason=switch.reason
    )
    if switch.was_running:
        _boot_back(start, folder.name, secret_values, outcome)
    return outcome


def _boot_back(
    start: Starter,
    name: str,
    secret_values: Mapping[str, str],
    outcome: Outcome,
) -> None:
    try:
        launched = boot(start, name, secret_values)
        check = launched.contract.health
        outcome.back = settle(launched, check.timeout if check is not None else 30.0)
    except KilnError as exc:
        outcome.back_error = exc.message.splitlines()[0]


def rollback(
    home: Home,
    catalog: Opener | None,
    start: Starter,
    name: str,
    active_id: int,
    target_image: StoredImage,
    secret_values: Mapping[str, str],
) -> Outcome:
    """Make the other slot active (``target_image`` is its image): an update a killed kiln
    left is undone, a rollback it left is finished, else the fallback and the active slot
    trade places. The slot made active is booted and waited for until healthy once."""
    folder = Folder.of(home, name)
    with held(folder):
        switch = pending(folder)
        if switch is not None and switch.op == "update":
            if switch.origin.digest != target_image.digest:
                raise Busy(f"machine {name}: its interrupted update changed while kiln looked")
            outcome = _undo(home, catalog, start, folder, switch, target_image, secret_values)
            outcome.resumed, outcome.op = True, "rollback"
            if not switch.was_running:  # asked to bring it back: boot it
                _boot_back(start, name, secret_values, outcome)
            outcome.ok = outcome.back is not None and outcome.back.ok
            return outcome
        if switch is None:
            state = load(folder)
            if state.fallback is None:
                raise KilnError(
                    f"machine {name} has no fallback slot to return to",
                    hint=f"kiln update {name} --to REF makes one (the slot it leaves)",
                )
            target = Slot.from_json(state.fallback)
            origin = slots.active_slot(home, catalog, name, active_id)
            slots.remove(next_dir(folder))
            switch = Switch("rollback", "halt", origin, target)
            resumed = False
        else:
            resumed = True
        if switch.target.digest != target_image.digest:
            raise Busy(f"machine {name}: its fallback changed while kiln looked")
        target = dataclasses.replace(
            switch.target, layers=tuple(str(d) for d in target_image.layer_dirs)
        )
        _swap(home, catalog, folder, switch, target)
    outcome = Outcome(name, "rollback", False, switch.origin, target, target, switch.origin)
    outcome.resumed = resumed
    _boot_back(start, name, secret_values, outcome)
    outcome.proof, outcome.back = outcome.back, None
    outcome.ok = outcome.proof is not None and outcome.proof.ok
    return outcome


def _swap(home: Home, catalog: Opener | None, folder: Folder, switch: Switch, target: Slot) -> None:
    """The rollback's moves, from the step switch.json names: the active slot is parked in
    next/, the fallback made active, the parked one stored as the fallback."""
    stored, parked = fallback_dir(folder), next_dir(folder)
    moves = {
        "park-upper": (folder.upper, parked / "upper"),
        "park-config": (folder.config, parked / "config"),
        "activate-config": (stored / "config", folder.config),
        "activate-upper": (stored / "upper", folder.upper),
        "store-upper": (parked / "upper", stored / "upper"),
        "store-config": (parked / "config", stored / "config"),
    }
    for step in ROLLBACK[ROLLBACK.index(switch.step) : ROLLBACK.index("boot")]:
        slots.at(folder, switch, step)
        if step == "halt":
            switch.was_running = slots.halt(home, folder)
        elif step == "state":
            slots.set_state(folder, target, switch.origin, tentative=False)
        elif step == "catalog":
            slots.repoint_catalog(home, catalog, folder.name, target)
        else:
            src, dst = moves[step]
            slots.move(src, dst)
    slots.remove(parked)
    slots.done(folder)
