"""A/B slots of one machine: a new image boots beside the old one, which waits stopped.

The active slot is what every other command reads: the folder's ``upper/`` and ``config/``
and machine.json's image, digest and layers. The fallback is kept in ``fallback/`` (its
``upper/`` and ``config/``), its image in ``State.fallback``, disabled and never destroyed
until the next update replaces it (RAUC's and systemd-bless-boot's rule). An update stages
the new slot in ``next/`` (an empty upper, its config), halts the machine, stores the active
slot as the fallback, makes the staged one active and boots it. It is tentative until its
health check has held for the mark-good window; when it fails, or misses its deadline, the
machine is switched back. A rollback swaps the two slots.

Every move is a rename inside the folder, and the step about to be taken is written to
``switch.json`` first, so a kiln killed half-way leaves a machine the next ``kiln update
NAME --rollback`` brings back: an update is undone (its image never proved itself), a
rollback finished. The order keeps one rule for ``kiln start`` at every step: while
``upper/`` exists it belongs to the image machine.json names, and ``config/`` beside it to
the same slot; in between ``upper/`` is absent and kiln start refuses plainly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets as tokens
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import locks
from kiln.atomic import fsync_dir, write_atomic
from kiln.errors import KilnError, StoreError
from kiln.home import Home
from kiln.layers import Stack
from kiln.machines import config, manage, process
from kiln.machines.contract import from_config
from kiln.machines.folder import FILE_MODE, Folder, load, make_dir, save, write_file
from kiln.machines.recording import Opener, opened
from kiln.mounts import remove_tree
from kiln.store.stored import StoredImage

ITEMS = ("upper", "config")  # what a slot owns in the folder; the rest is the machine's


class Busy(KilnError):
    """Another kiln is switching the machine's slots right now."""


@dataclass(frozen=True)
class Slot:
    """One slot as machine.json and switch.json keep it (plain values only, never secrets)."""

    slot: str  # "a" or "b"
    image: str  # name:version
    digest: str
    image_id: int
    layers: tuple[str, ...] = ()
    config: Mapping[str, str] = field(default_factory=dict)
    secret_keys: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        return self.image.partition(":")[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "image": self.image,
            "digest": self.digest,
            "image_id": self.image_id,
            "layers": list(self.layers),
            "config": dict(self.config),
            "secret_keys": list(self.secret_keys),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Slot:
        return cls(
            str(data["slot"]),
            str(data["image"]),
            str(data["digest"]),
            int(data["image_id"]),
            tuple(data.get("layers") or ()),
            dict(data.get("config") or {}),
            tuple(data.get("secret_keys") or ()),
        )

    def brief(self) -> dict[str, str]:
        return {"slot": self.slot, "image": self.image, "digest": self.digest}


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass
class Switch:
    """switch.json: a switch under way, and the step it is about to take."""

    op: str  # "update" or "rollback"
    step: str  # the step being taken (kiln.machines.update.UPDATE or ROLLBACK)
    origin: Slot  # the slot that was active
    target: Slot  # the slot being made active
    was_running: bool = True
    undo: str = ""  # an update being undone: its step
    reason: str = ""  # why it is undone

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["origin"], data["target"] = self.origin.to_json(), self.target.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Switch:
        data = dict(data)
        data["origin"] = Slot.from_json(data["origin"])
        data["target"] = Slot.from_json(data["target"])
        return cls(**data)


def journal(folder: Folder) -> Path:
    return folder.path / "switch.json"


def fallback_dir(folder: Folder) -> Path:
    return folder.path / "fallback"


def next_dir(folder: Folder) -> Path:
    return folder.path / "next"


def pending(folder: Folder) -> Switch | None:
    """The switch a kiln left half-way (killed, or its undo failed), or None."""
    path = journal(folder)
    if not path.is_file():
        return None
    try:
        return Switch.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"{path} is damaged: {exc}", hint="look at it, then remove it") from None


def at(folder: Folder, switch: Switch, step: str, undo: bool = False) -> None:
    """Write down the step about to be taken, before it is taken."""
    if undo:
        switch.undo = step
    else:
        switch.step = step
    data = json.dumps(switch.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(journal(folder), data, FILE_MODE)


def done(folder: Folder) -> None:
    journal(folder).unlink(missing_ok=True)
    fsync_dir(folder.path)


@contextlib.contextmanager
def held(folder: Folder) -> Iterator[None]:
    """The machine's folder for this process alone while its slots move (flock: a killed
    kiln holds nothing, so its switch.json is left for the next one to finish)."""
    lock = locks.hold(folder.path, directory=True, wait=False)
    if lock is None:
        raise Busy(
            f"another kiln is switching the slots of machine {folder.name}",
            hint="wait for it to finish; kiln ps shows the slot it is on",
        )
    with lock:
        yield


def move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; done already when only ``dst`` is there (a step taken again
    after a crash)."""
    if src.exists() or src.is_symlink():
        if dst.exists():
            raise StoreError(f"cannot move {src} to {dst}: {dst} exists", hint="look at both")
        make_dir(dst.parent)
        os.rename(src, dst)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
    elif not dst.exists():
        raise StoreError(f"{src} is missing, and {dst} too", hint="the slot's files are lost")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- what an update or a rollback is made of ---


def _locale(layers: tuple[Path, ...]) -> str:
    """The image's locale (its /etc/default/locale as the layers stack it), or C.UTF-8."""
    rel = config.LOCALE_FILE.lstrip("/")
    with Stack(layers) as stack:
        found = stack.find(rel)
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return config.DEFAULT_LOCALE
        try:
            text = stack.roots[found[0]].read_text(rel, limit=64 << 10)
        except (OSError, KilnError, ValueError):
            return config.DEFAULT_LOCALE
    return config.image_locale(text) or config.DEFAULT_LOCALE


def stage(folder: Folder, image: StoredImage, values: config.Values) -> None:
    """next/: an empty upper and the config files of the new slot (plain values only)."""
    staged = next_dir(folder)
    remove(staged)
    make_dir(staged / "upper")
    seed = make_dir(staged / "config" / "seed")
    write_file(staged / "config" / folder.env_file.name, config.env_file(values))
    instance = f"kiln-{folder.name}-{tokens.token_hex(4)}"
    write_file(seed / "meta-data", config.meta_data(instance, folder.name))
    locale = _locale(image.layer_dirs)
    write_file(seed / "user-data", config.user_data(folder.name, image.ref, values, locale))
    fsync_dir(staged)


def halt(home: Home, folder: Folder) -> bool:
    """Power the machine off (and any nspawn its state does not name: a start killed before
    it saved); True if it was running."""
    state = load(folder)
    was_running = manage.halt(home, folder, state)
    if process.nspawns_of(folder.root):
        was_running = manage.force_halt(home, folder, state) or was_running
    return was_running


def set_state(folder: Folder, active: Slot, fallback: Slot | None, tentative: bool) -> None:
    state = load(folder)
    save(
        folder,
        dataclasses.replace(
            state,
            image=active.image,
            digest=active.digest,
            layers=list(active.layers),
            slot=active.slot,
            fallback=fallback.to_json() if fallback is not None else None,
            tentative=tentative,
        ),
    )


def repoint_catalog(home: Home, catalog: Opener | None, name: str, slot: Slot) -> None:
    from kiln.catalog.machines import repoint

    with opened(home, catalog) as held_catalog, held_catalog.session() as session:
        repoint(
            session, name, slot.image_id, slot.image, slot.digest, slot.config, slot.secret_keys
        )


def active_slot(home: Home, catalog: Opener | None, name: str, image_id: int) -> Slot:
    """The running slot as a record: machine.json's image, the catalog's plain values."""
    from kiln.machines.recording import recorded

    state = load(Folder.of(home, name))
    with opened(home, catalog) as held_catalog:
        plain, keys = recorded(held_catalog, name)
    return Slot(
        state.slot, state.image, state.digest, image_id, tuple(state.layers), plain, tuple(keys)
    )


def values_for(
    image: StoredImage,
    recorded_plain: Mapping[str, str],
    sets: tuple[str, ...],
    config_file: Path | None,
) -> config.Values:
    """The new slot's values: its contract, with the plain values the machine runs with as
    defaults (so they carry over), and what --set and --config give winning over them."""
    contract = from_config(image.config)
    keys = {
        name: dataclasses.replace(key, default=recorded_plain[name])
        if not key.secret and name in recorded_plain
        else key
        for name, key in contract.keys.items()
    }
    contract = dataclasses.replace(contract, keys=keys)
    return config.resolve(image.ref, contract, sets, config_file)


def refuse_pending(folder: Folder) -> None:
    switch = pending(folder)
    if switch is not None:
        back = switch.origin if switch.op == "update" else switch.target
        raise KilnError(
            f"machine {folder.name}: {'an' if switch.op == 'update' else 'a'} {switch.op} "
            f"to {switch.target.image} was interrupted "
            f"at its step '{switch.undo or switch.step}'",
            hint=f"kiln update {folder.name} --rollback brings it back on {back.image}",
        )
