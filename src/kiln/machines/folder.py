"""A machine's folder, $KILN_HOME/machines/<name>, and the state file that says it exists.

    machine.json   the state: image, processes, volumes (written last by kiln run)
    root/          the overlay mount the machine boots from (image layers + upper/)
    upper/ work/   the machine's own writes, and overlayfs' scratch folder
    config/        config.env and seed/ (NoCloud), bound read-only into the machine
    console.log    systemd-nspawn's output: the boot console
    volumes/       the state paths' folders, unless --volume put them elsewhere

``machine.json`` is created exclusively, so two launches of one name cannot both win;
``kiln rm`` removes everything but ``volumes/`` (all of it with ``--volumes``).

Every folder and file here gets its mode from kiln, never from the caller's umask: under
``umask 077`` an upper dir made 0700 is a machine whose ``/`` is ``drwx------`` (its
services fail with EACCES), and config bound in 0600 is config its services cannot read.
Folders a machine sees or holds are 0755, files 0644; ``work/`` (overlayfs' scratch) is
0700. No secret is ever written here (they reach the machine over pipes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.atomic import FOLDER_MODE, make_dirs, write_atomic
from kiln.errors import BadInput, KilnError, StoreError
from kiln.home import Home

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
FILE_MODE = 0o644
SCRATCH_MODE = 0o700  # work/: overlayfs alone uses it


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name.endswith("-"):
        raise BadInput(
            f"'{name}' is not a machine name",
            hint="use lower case letters, digits and '-' (it becomes the host name), "
            "at most 63 characters",
        )
    return name


def machines_dir(home: Home) -> Path:
    return home.root / "machines"


def make_dir(path: Path, mode: int = FOLDER_MODE) -> Path:
    """:func:`kiln.atomic.make_dirs`, and ``path`` must end up a folder."""
    make_dirs(path, mode)
    if not path.is_dir():
        raise BadInput(f"{path} is not a folder")
    return path


def write_file(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write a small file with ``mode`` whatever the umask (not atomic: a launch's own)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, mode)
        handle.write(text)


@dataclass(frozen=True)
class Folder:
    path: Path

    @classmethod
    def of(cls, home: Home, name: str) -> Folder:
        return cls(machines_dir(home) / check_name(name))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state_file(self) -> Path:
        return self.path / "machine.json"

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def work(self) -> Path:
        return self.path / "work"

    @property
    def config(self) -> Path:
        return self.path / "config"

    @property
    def env_file(self) -> Path:
        return self.config / "config.env"

    @property
    def seed(self) -> Path:
        return self.config / "seed"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def volumes(self) -> Path:
        return self.path / "volumes"

    def exists(self) -> bool:
        return self.state_file.is_file()


@dataclass(frozen=True)
class Proc:
    """A process as the kernel knows it: pid and start time (clock ticks after boot)."""

    pid: int
    start: int


@dataclass
class State:
    name: str
    image: str  # name:version
    digest: str
    boot_id: str  # the host's boot the processes belong to
    nspawn: Proc
    leader: Proc  # the machine's systemd, its PID 1
    volumes: dict[str, str] = field(default_factory=dict)  # state path -> host folder
    managed_volumes: list[str] = field(default_factory=list)  # state paths under volumes/
    tooling: bool = False  # kiln's venv and the recipe folder are bound in (kiln test)
    recipe_folder: str = ""
    layers: list[str] = field(default_factory=list)  # lowerdirs, bottom first
    network: str = ""  # the network it is attached to ("" none: the host's own, as before)
    address: str = ""  # its IPv4 address on that network, kept across restarts
    ports: list[str] = field(default_factory=list)  # [HOST_IP:]HOST_PORT:PORT/PROTO forwarded
    group: str = ""  # the group it is a member of (kiln up), "" for a machine of its own
    slot: str = "a"  # A/B: the slot running now ("a" or "b"), see kiln.machines.slots
    fallback: dict[str, Any] | None = None  # A/B: the stopped other slot (image, layers)
    tentative: bool = False  # A/B: booted on a new slot, not yet marked good

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        data = dict(data)
        data["nspawn"] = Proc(**data["nspawn"])
        data["leader"] = Proc(**data["leader"])
        return cls(**data)


def claim(folder: Folder) -> None:
    """Make the folder and take the name; BadInput if a machine already has it."""
    make_dir(folder.path)
    try:
        fd = os.open(folder.state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        raise BadInput(
            f"a machine named {folder.name} exists",
            hint=f"remove it first (kiln rm {folder.name}), or choose another --name",
        ) from None
    os.fchmod(fd, FILE_MODE)
    os.close(fd)


def save(folder: Folder, state: State) -> None:
    data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(folder.state_file, data, FILE_MODE)


def load(folder: Folder) -> State:
    if not folder.exists():
        raise BadInput(f"no machine named {folder.name}", hint="'kiln ps' lists the machines")
    try:
        return State.from_json(json.loads(folder.state_file.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(
            f"{folder.state_file} is damaged or the launch did not finish: {exc}",
            hint=f"kiln rm {folder.name} removes what is left of it",
        ) from None


def each(home: Home) -> Iterator[tuple[Folder, State | None]]:
    """Every machine folder of ``home`` with a state file, by name, and its state: None
    while it does not read (a launch under way, or a damaged file)."""
    top = machines_dir(home)
    for path in sorted(top.iterdir()) if top.is_dir() else []:
        folder = Folder(path)
        if not folder.exists():
            continue
        try:
            yield folder, load(folder)
        except KilnError:
            yield folder, None
