"""`kiln run`: boot a machine from an image, as one straight pipeline.

    resolve the image -> check the config -> claim the name -> mount the overlay
    -> volumes -> config files -> start nspawn -> find its systemd -> record
    -> (with wait) systemd running -> health check

Everything up to the record hangs off one ExitStack: a launch that fails leaves no mount,
no process and no folder behind (volumes stay). The machine outlives this process:
nspawn runs in a session of its own, its output going to the machine's console log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln import proc
from kiln.bake.root import Overlay, remove_tree
from kiln.bake.service import load_image, open_store
from kiln.catalog import Catalog, Machine
from kiln.errors import BadInput, KilnError
from kiln.home import Home
from kiln.machines import config, health, nspawn, process, volumes
from kiln.machines.contract import Contract, Health, from_config
from kiln.machines.folder import Folder, Proc, State, claim, save
from kiln.store.atomic import write_atomic

BOOT_TIMEOUT = 60.0  # to systemd's 'running'; the health check has its own timeout
LEADER_TIMEOUT = 15.0
INIT_PATHS = ("usr/lib/systemd/systemd", "lib/systemd/systemd")


@dataclass(frozen=True)
class Request:
    ref: str
    name: str
    sets: tuple[str, ...] = ()
    config_file: Path | None = None
    volumes: tuple[str, ...] = ()
    wait: bool = False
    generate: bool = False  # make up values for required keys nobody gave (kiln test)
    throwaway: bool = False
    recipe_folder: Path | None = None  # bind kiln's venv and this folder (steps at runtime)
    values: config.Values | None = None  # already checked elsewhere: skip the image's contract
    health: Health | None = None  # instead of the image's own check


@dataclass
class Launched:
    name: str
    image: str
    digest: str
    folder: Folder
    state: State
    contract: Contract
    values: config.Values
    started: float  # time.monotonic() when the launch began
    seconds_to_start: float = 0.0
    running_seconds: float | None = None
    health: health.Result | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "digest": self.digest,
            "folder": str(self.folder.path),
            "nspawn_pid": self.state.nspawn.pid,
            "leader_pid": self.state.leader.pid,
            "volumes": self.state.volumes,
            "generated": list(self.values.generated),
            "seconds_to_start": round(self.seconds_to_start, 3),
            "running_seconds": (
                round(self.running_seconds, 3) if self.running_seconds is not None else None
            ),
            "health": self.health.to_json() if self.health else None,
        }


def _check_bootable(layer_dirs: tuple[Path, ...], ref: str) -> None:
    if not any(os.path.lexists(d / p) for d in layer_dirs for p in INIT_PATHS):
        raise BadInput(
            f"{ref} has no systemd: a machine boots with systemd as PID 1",
            hint="build the image on a base with systemd (see examples/base.toml)",
        )


def _write_config(folder: Folder, name: str, ref: str, values: config.Values) -> None:
    write_atomic(folder.env_file, config.env_file(values).encode())
    instance = f"kiln-{name}-{secrets.token_hex(4)}"
    write_atomic(folder.seed / "meta-data", config.meta_data(instance, name).encode())
    write_atomic(folder.seed / "user-data", config.user_data(name, ref, values).encode())


def _start(
    boot: nspawn.Boot, console: Path, secret_values: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start nspawn detached (its own session); hand each secret over a pipe, never a file."""
    pipes = {key: os.pipe() for key in secret_values}
    boot = dataclasses.replace(boot, credentials={key: r for key, (r, _w) in pipes.items()})
    try:
        with console.open("ab") as log:
            child = subprocess.Popen(
                boot.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=proc.environment(),
                start_new_session=True,
                pass_fds=[r for r, _w in pipes.values()],
            )
    finally:
        for r, _w in pipes.values():
            os.close(r)
    for key, (_r, w) in pipes.items():
        try:
            os.write(w, secret_values[key].encode())
        except BrokenPipeError:
            pass  # nspawn is gone; the leader search reports it with the console
        finally:
            os.close(w)
    return child


def _find_leader(child: subprocess.Popen[bytes], name: str, console: Path) -> Proc:
    deadline = time.monotonic() + LEADER_TIMEOUT
    while True:
        found = process.leader(child.pid)
        if found is not None:
            return found
        if child.poll() is not None:
            raise KilnError(
                f"systemd-nspawn exited with code {child.returncode} before {name} booted\n"
                f"--- last lines of its console ---\n{health.console_tail(console)}",
                hint=f"the whole console is in {console}",
            )
        if time.monotonic() > deadline:
            raise KilnError(f"{name}: systemd did not start in {LEADER_TIMEOUT:.0f}s")
        time.sleep(0.005)


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()  # nspawn passes its kill signal (poweroff) on to the machine
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _record(catalog: Catalog, image_id: int, launched: Launched, throwaway: bool) -> None:
    with catalog.session() as session:
        stale = session.query(Machine).filter(
            Machine.name == launched.name, Machine.removed.is_(None)
        )
        now = datetime.now(UTC)
        for row in stale:  # its folder is gone: that machine is history
            row.removed = now
        session.add(
            Machine(
                name=launched.name,
                image_id=image_id,
                image_ref=launched.image,
                digest=launched.digest,
                folder=str(launched.folder.path),
                created=now,
                nspawn_pid=launched.state.nspawn.pid,
                leader_pid=launched.state.leader.pid,
                config=json.dumps(dict(launched.values.plain), sort_keys=True),
                secret_keys=json.dumps(sorted(launched.values.secrets)),
                volumes=json.dumps(launched.state.volumes, sort_keys=True),
                throwaway=throwaway,
            )
        )


def _discard(folder: Folder) -> None:
    """Undo a launch that did not finish: everything in the folder but the volumes."""
    if folder.root.is_mount():
        proc.run(["umount", str(folder.root)], check=False)
    for child in folder.path.iterdir() if folder.path.is_dir() else []:
        if child.name == folder.volumes.name:
            continue
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()
    if folder.path.is_dir() and not any(folder.path.iterdir()):
        folder.path.rmdir()


def run(request: Request, home: Home | None = None) -> Launched:
    started = time.monotonic()
    home = home or Home.from_env()
    folder = Folder.of(home, request.name)
    layout, catalog = open_store(home)
    try:
        with catalog.session() as session:
            image = catalog.resolve(session, request.ref)
            stored = load_image(home, layout, image)
            image_id, ref, digest = image.id, image.ref, image.digest
        contract = from_config(stored.config)
        values = request.values or config.resolve(
            ref, contract, request.sets, request.config_file, generate=request.generate
        )
        _check_bootable(stored.layer_dirs, ref)
        planned = volumes.plan(folder, contract.state, request.volumes)
        claim(folder)
        with ExitStack() as undo:
            undo.callback(_discard, folder)
            Overlay(
                list(reversed(stored.layer_dirs)), folder.upper, folder.work, folder.root
            ).mount()
            for volume in planned:
                volumes.prepare(volume, folder.root)
            _write_config(folder, request.name, ref, values)
            binds = nspawn.config_binds(folder.env_file, folder.seed)
            binds += nspawn.volume_binds({v.path: str(v.source) for v in planned})
            if request.recipe_folder is not None:
                binds += nspawn.tooling_binds(Path(sys.prefix), request.recipe_folder)
            boot = nspawn.Boot(
                folder.root,
                request.name,
                tuple(binds),
                host_resolv_conf=request.recipe_folder is not None,
            )
            child = _start(boot, folder.console, dict(values.secrets))
            undo.callback(_stop_child, child)
            leader = _find_leader(child, request.name, folder.console)
            nspawn_proc = process.identify(child.pid)
            if nspawn_proc is None:
                raise KilnError(f"systemd-nspawn for {request.name} is gone")
            state = State(
                name=request.name,
                image=ref,
                digest=digest,
                boot_id=process.boot_id(),
                nspawn=nspawn_proc,
                leader=leader,
                volumes={v.path: str(v.source) for v in planned},
                managed_volumes=[v.path for v in planned if v.managed],
                tooling=request.recipe_folder is not None,
                recipe_folder=str(request.recipe_folder or ""),
                layers=[str(d) for d in stored.layer_dirs],
            )
            launched = Launched(request.name, ref, digest, folder, state, contract, values, started)
            save(folder, state)
            _record(catalog, image_id, launched, request.throwaway)
            undo.pop_all()  # the machine exists now; kiln stop and kiln rm take it from here
        launched.seconds_to_start = time.monotonic() - started
        if request.wait:
            wait(launched, request.health or contract.health)
        return launched
    finally:
        catalog.close()


def wait(launched: Launched, check: Health | None) -> None:
    """Until systemd runs, then until the health check passes (NotReady otherwise)."""
    health.wait_running(launched.state, launched.folder.console, BOOT_TIMEOUT)
    launched.running_seconds = time.monotonic() - launched.started
    if check is None:
        return
    result = health.wait_healthy(launched.state, check, launched.folder.console, launched.started)
    launched.health = result
    if not result.ok:
        name = launched.name
        raise health.NotReady(
            f"machine {name} is not healthy after {check.timeout:g}s: "
            f"{result.check}: {result.detail}",
            hint=f"the machine is left running: kiln logs {name}; kiln rm {name}",
        )
