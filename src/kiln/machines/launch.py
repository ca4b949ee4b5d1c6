"""`kiln run`: boot a machine from an image, as one straight pipeline.

    resolve the image -> check the config -> claim the name -> mount the overlay
    -> volumes -> config files -> start nspawn -> find its systemd -> record
    -> (with wait) systemd running -> health check

Everything up to the record hangs off one ExitStack: a launch that fails leaves no mount,
no process and no folder behind (volumes stay). The machine outlives this process:
nspawn runs in a session of its own, its output going to the machine's console log.

The caller hands in the image the catalog resolved (kiln.app.resolve, in plain SQL on the
embedded catalog) and the process's catalog, where kiln.machines.recording records the
machine on a second thread while it boots; a failed record undoes the launch.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import cgroups, proc
from kiln.errors import BadInput, KilnError, StoreError
from kiln.home import Home
from kiln.machines import config, health, leftovers, netns, notify, nspawn, process, volumes
from kiln.machines.contract import Contract, Health, from_config
from kiln.machines.folder import (
    FILE_MODE,
    SCRATCH_MODE,
    Folder,
    Proc,
    State,
    claim,
    load,
    make_dir,
    save,
    write_file,
)
from kiln.machines.recording import Opener, Recorder, opened, record_start, recorded
from kiln.mounts import Overlay, remove_tree
from kiln.rootpath import Root
from kiln.sandbox import Bind, Boot
from kiln.store.stored import StoredImage

BOOT_TIMEOUT = 60.0  # to systemd's 'running'; the health check has its own timeout
LEADER_TIMEOUT = 15.0
INIT_PATHS = ("usr/lib/systemd/systemd", "lib/systemd/systemd")
HOST_NETWORK = "host"  # Request.network: share the host's network namespace


@dataclass(frozen=True)
class Request:
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
    # a kiln network (kiln.fleet.network prepares it; launch gets its Attachment), HOST
    # for the host's own network, "" for loopback only (kiln test's throwaway machines)
    network: str = ""
    ports: tuple[str, ...] = ()  # [HOST_IP:]HOST_PORT:MACHINE_PORT[/PROTO], needs a network
    group: str = ""  # a member of this group (kiln up)


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
    # nspawn's reports (kiln.machines.notify), open until the boot's end is known; only the
    # process that booted the machine has it
    channel: notify.Channel | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "digest": self.digest,
            "folder": str(self.folder.path),
            "nspawn_pid": self.state.nspawn.pid,
            "leader_pid": self.state.leader.pid,
            "volumes": self.state.volumes,
            "network": self.state.network or None,
            "address": self.state.address or None,
            "ports": list(self.state.ports),
            "generated": list(self.values.generated),
            "seconds_to_start": round(self.seconds_to_start, 3),
            "running_seconds": (
                round(self.running_seconds, 3) if self.running_seconds is not None else None
            ),
            "health": self.health.to_json() if self.health else None,
        }


def _has_init(layer: Path) -> bool:
    with Root(layer) as root:
        return any(root.exists(path) for path in INIT_PATHS)


def _check_bootable(layer_dirs: tuple[Path, ...], ref: str) -> None:
    if not any(_has_init(layer) for layer in layer_dirs):
        raise BadInput(
            f"{ref} has no systemd: a machine boots with systemd as PID 1",
            hint="build the image on a base with systemd (see examples/base.toml)",
        )


def _locale(root: Path) -> str:
    """The locale the image sets in /etc/default/locale (read inside the root), or C.UTF-8."""
    with Root(root) as image:
        try:
            text = image.read_text(config.LOCALE_FILE, limit=64 << 10)
        except (OSError, KilnError, ValueError):
            return config.DEFAULT_LOCALE
    return config.image_locale(text) or config.DEFAULT_LOCALE


def _write_config(folder: Folder, name: str, ref: str, values: config.Values) -> None:
    """Plain values only. Made fresh by each launch, read by nothing before the boot."""
    make_dir(folder.seed)
    write_file(folder.env_file, config.env_file(values))
    instance = f"kiln-{name}-{secrets.token_hex(4)}"
    write_file(folder.seed / "meta-data", config.meta_data(instance, name))
    user_data = config.user_data(name, ref, values, _locale(folder.root))
    write_file(folder.seed / "user-data", user_data)


def _overlay(layers: tuple[Path, ...], folder: Folder) -> Overlay:
    """The machine's overlay, its folders made with their own modes first: the upper dir
    is the machine's ``/`` (0755, as the image's), whatever the caller's umask."""
    make_dir(folder.upper)
    make_dir(folder.work, SCRATCH_MODE)
    make_dir(folder.root)
    return Overlay(list(reversed(layers)), folder.upper, folder.work, folder.root)


def _start(
    boot: Boot, console: Path, secret_values: dict[str, str], channel: notify.Channel
) -> subprocess.Popen[bytes]:
    """Start nspawn detached (its own session); hand each secret over a pipe, never a file;
    nspawn reports to ``channel``."""
    pipes = {key: os.pipe() for key in secret_values}
    boot = dataclasses.replace(boot, credentials={key: r for key, (r, _w) in pipes.items()})
    os.close(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE))
    os.chmod(console, FILE_MODE)  # nspawn's output is appended to it, whatever the umask
    try:
        argv = cgroups.enter(boot.cgroup, boot.argv())  # a cgroup no other machine shares
        child = proc.spawn_detached(
            argv,
            console,
            pass_fds=[r for r, _w in pipes.values()],
            env={"NOTIFY_SOCKET": channel.address},
        )
    finally:
        for r, _w in pipes.values():
            os.close(r)
    channel.expect(child.pid)  # cgroups.enter's shell execs nspawn: the same pid
    for key, (_r, w) in pipes.items():
        try:
            os.write(w, secret_values[key].encode())
        except BrokenPipeError:
            pass  # nspawn is gone; the leader search reports it with the console
        finally:
            os.close(w)
    return child


def _find_leader(
    child: subprocess.Popen[bytes], name: str, console: Path, channel: notify.Channel
) -> Proc:
    """The machine's PID 1, as nspawn reports it once the machine's init runs."""
    deadline = time.monotonic() + LEADER_TIMEOUT
    while True:
        channel.receive(0.05)
        pid = channel.leader_pid
        found = process.identify(pid) if pid is not None else None
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


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()  # nspawn passes its kill signal (poweroff) on to the machine
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


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


def _network(
    home: Home, folder: Folder, name: str, network: str, link: netns.Attachment | None
) -> tuple[list[Bind], Path | None]:
    """The machine's hosts file and namespace, made before it boots (kiln.machines.netns)."""
    if link is None:
        return [], None
    hosts = folder.config / "hosts"
    make_dir(folder.config)
    netns.write_hosts(hosts, link.hosts)
    return [Bind(hosts, nspawn.HOSTS_TARGET)], netns.prepare(home.id, name, link)


def _boot(
    home: Home,
    folder: Folder,
    name: str,
    volume_map: dict[str, str],
    recipe_folder: Path | None,
    secret_values: dict[str, str],
    undo: ExitStack,
    network: str = "",
    link: netns.Attachment | None = None,
) -> tuple[Proc, Proc, notify.Channel]:
    """Start nspawn on the mounted overlay with the folder's config, the volumes and the
    secrets, in its network; return its process, the machine's systemd and the channel
    nspawn reports the boot's end on. ``undo`` stops it and removes its namespace."""
    binds = nspawn.config_binds(folder.env_file, folder.seed)
    binds += nspawn.volume_binds(volume_map)
    if recipe_folder is not None:
        binds += nspawn.tooling_binds(Path(sys.prefix), recipe_folder)
    undo.callback(netns.remove, home.id, name)
    host_binds, path = _network(home, folder, name, network, link)
    boot = Boot(
        folder.root,
        name,
        home.id,
        tuple(binds + host_binds),
        private_network=network != HOST_NETWORK,
        host_resolv_conf=recipe_folder is not None,
        netns=path,
    )
    channel = notify.Channel()
    undo.callback(channel.close)
    child = _start(boot, folder.console, secret_values, channel)
    undo.callback(_stop_child, child)
    leader = _find_leader(child, name, folder.console, channel)
    nspawn_proc = process.identify(child.pid)
    if nspawn_proc is None:
        raise KilnError(f"systemd-nspawn for {name} is gone")
    return nspawn_proc, leader, channel


def _check_network(name: str, network: str, ports: tuple[str, ...], link: object) -> None:
    if ports and link is None:
        raise BadInput(
            f"machine {name}: --port needs a kiln network, and it has "
            + ("the host's own network" if network == HOST_NETWORK else "none"),
            hint="give --network NAME (the default network is kiln), or leave out --port",
        )
    if network not in ("", HOST_NETWORK) and link is None:
        raise KilnError(f"machine {name}: network {network} was not prepared for it")


def run(
    request: Request,
    image: StoredImage,
    image_id: int,
    home: Home,
    started: float | None = None,
    catalog: Opener | None = None,
    link: netns.Attachment | None = None,
) -> Launched:
    """Boot ``image`` (catalog row ``image_id``); ``started``: when the command began;
    ``catalog``: opens the process's catalog, where the machine is recorded; ``link``:
    where it plugs into the network ``request.network`` (kiln.fleet.network decides it)."""
    started = time.monotonic() if started is None else started
    _check_network(request.name, request.network, request.ports, link)
    folder = Folder.of(home, request.name)
    contract = from_config(image.config)
    values = request.values or config.resolve(
        image.ref, contract, request.sets, request.config_file, generate=request.generate
    )
    _check_bootable(image.layer_dirs, image.ref)
    planned = volumes.plan(folder, contract.state, request.volumes)
    if request.wait:
        health.check_tools(request.health or contract.health)
    claim(folder)
    recorder = Recorder(home, request, image_id, catalog)
    recorder.start()
    not_ready: health.NotReady | None = None
    with ExitStack() as undo:
        undo.callback(_discard, folder)
        undo.callback(recorder.cancel)
        _overlay(image.layer_dirs, folder).mount()
        for volume in planned:
            volumes.prepare(volume, folder.root)
        _write_config(folder, request.name, image.ref, values)
        nspawn_proc, leader, channel = _boot(
            home,
            folder,
            request.name,
            {v.path: str(v.source) for v in planned},
            request.recipe_folder,
            dict(values.secrets),
            undo,
            request.network,
            link,
        )
        state = State(
            name=request.name,
            image=image.ref,
            digest=image.digest,
            boot_id=process.boot_id(),
            nspawn=nspawn_proc,
            leader=leader,
            volumes={v.path: str(v.source) for v in planned},
            managed_volumes=[v.path for v in planned if v.managed],
            tooling=request.recipe_folder is not None,
            recipe_folder=str(request.recipe_folder or ""),
            layers=[str(d) for d in image.layer_dirs],
            network=request.network,
            address=link.address if link else "",
            ports=list(link.ports) if link else [],
        )
        launched = Launched(
            request.name, image.ref, image.digest, folder, state, contract, values, started
        )
        launched.channel = channel
        save(folder, state)
        launched.seconds_to_start = time.monotonic() - started
        recorder.submit(launched)
        if request.wait:
            try:
                wait(launched, request.health or contract.health)
            except health.NotReady as exc:
                not_ready = exc  # the machine stays, for a look inside
        recorder.result()  # the catalog refused the machine: undo it all
        undo.pop_all()  # the machine exists now; kiln stop and kiln rm take it from here
    if not_ready is not None:
        raise not_ready
    return launched


@dataclass(frozen=True)
class StartRequest:
    name: str
    sets: tuple[str, ...] = ()  # the machine's secrets again: kiln keeps none on disk
    config_file: Path | None = None
    wait: bool = False


def stopped(home: Home, name: str) -> State:
    """The state of a machine that exists and is not running (kiln start's first check)."""
    state = load(Folder.of(home, name))
    if process.running(state):
        raise BadInput(
            f"machine {name} is running",
            hint=f"kiln stop {name} first, or kiln exec {name} -- CMD",
        )
    return state


def start(
    request: StartRequest,
    image: StoredImage,
    home: Home,
    catalog: Opener | None = None,
    link: netns.Attachment | None = None,
) -> Launched:
    """Boot a stopped machine again (``image``: the one it was launched from, see
    ``stopped``), from its own upper dir (its changes kept), with the
    config, seed (same instance-id: cloud-init does not run its per-instance modules
    again), volumes, layers and network address it was launched with (``link``: its
    network's, from kiln.fleet.network). Its secrets are not stored, so they
    are given again; a missing one is named and nothing starts."""
    started = time.monotonic()
    folder = Folder.of(home, request.name)
    state = load(folder)
    _check_network(request.name, state.network, tuple(state.ports), link)
    contract = from_config(image.config)
    with opened(home, catalog) as held:
        plain, secret_keys = recorded(held, request.name)
    secret_values = config.resolve_secrets(
        request.name, contract, secret_keys, request.sets, request.config_file
    )
    layers = tuple(Path(d) for d in state.layers) or image.layer_dirs
    missing = [str(d) for d in layers if not d.is_dir()]
    if missing or not folder.upper.is_dir():
        raise StoreError(
            f"machine {request.name} cannot start: "
            + (f"its image layers are gone ({', '.join(missing)})" if missing else "no upper dir"),
            hint=f"kiln rm {request.name}, then kiln run a new one",
        )
    gone = sorted(source for source in state.volumes.values() if not Path(source).is_dir())
    if gone:
        raise BadInput(
            f"machine {request.name} cannot start: its volume folders are gone: {', '.join(gone)}",
            hint="put the data back there (an empty folder starts it empty), then kiln start again",
        )
    if request.wait:
        health.check_tools(contract.health)
    if folder.root.is_mount():  # a host that went down with the machine running
        proc.run(["umount", str(folder.root)])
    not_ready: health.NotReady | None = None
    with leftovers.preparing(home), ExitStack() as undo:  # gc leaves its namespace be
        _overlay(layers, folder).mount()
        undo.callback(proc.run, ["umount", str(folder.root)], check=False)
        recipe_folder = Path(state.recipe_folder) if state.tooling else None
        nspawn_proc, leader, channel = _boot(
            home,
            folder,
            request.name,
            state.volumes,
            recipe_folder,
            secret_values,
            undo,
            state.network,
            link,
        )
        state = dataclasses.replace(
            state,
            boot_id=process.boot_id(),
            nspawn=nspawn_proc,
            leader=leader,
            address=link.address if link else state.address,
        )
        save(folder, state)
        values = config.Values(plain, secret_values)
        launched = Launched(
            request.name, state.image, state.digest, folder, state, contract, values, started
        )
        launched.channel = channel
        launched.seconds_to_start = time.monotonic() - started
        with opened(home, catalog) as held:
            record_start(held, state)
        undo.pop_all()
    if request.wait:
        try:
            wait(launched, contract.health)
        except health.NotReady as exc:
            not_ready = exc
    if not_ready is not None:
        raise not_ready
    return launched


def wait(launched: Launched, check: Health | None) -> None:
    """Until systemd runs, then until the health check passes (NotReady otherwise)."""
    health.wait_running(launched.state, launched.folder.console, BOOT_TIMEOUT, launched.channel)
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
