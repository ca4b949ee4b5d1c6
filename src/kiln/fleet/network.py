"""Networks: named private subnets of this host that machines join, one bridge each.

    $KILN_HOME/networks/NAME.json   the network: its subnet and bridge while it has
                                    members, and each member's address and host ports

A network is made on first use (``kiln run --network NAME``, or ``kiln network create``).
It takes a /24 of the policy's ``[network] range`` (kiln.lifecycle.fleetpolicy, default
10.231.0.0/16) with its first machine: one that overlaps no route of the host (``ip -4 -j
route show table all``, every table) and no subnet another network holds, this home's or
another's. The bridge gets ``.1``, machines ``.2`` to ``.254``. The bridge goes, and the
subnet is given back, when the last machine of the network is removed: a stopped machine
keeps its address, and ``kiln start`` boots it with that address again.

Subnets are chosen under one lock for the whole host (:data:`HOST_DIR`), never per home, and
each chosen subnet is claimed there (``subnets/<a.b.c.0-24>``, naming the home and the
network), so two KILN_HOMEs on one host never pick one subnet, even before a bridge shows
it in the host's routes. A claim whose home no longer holds that subnet is stale and is
taken over. ``/run`` empties at a reboot; a home's networks claim their subnets again when
their bridges are made again (``kiln start``).

Each machine of a network gets a hosts file in its config folder, bound read-only at its
/etc/hosts (kiln.machines.netns says why not nspawn's resolver). When a machine joins or
leaves, the hosts file of every member is rewritten in place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from kiln import locks, proc, times
from kiln.atomic import make_dirs, write_atomic
from kiln.errors import BadInput, KilnError
from kiln.fleet.netports import Forward, check_free, parse_port
from kiln.home import Home
from kiln.lifecycle.fleetdefaults import NETWORK_PREFIX
from kiln.machines import netns
from kiln.machines.folder import Folder

HOST_DIR = Path("/run/kiln")  # host-wide: the subnet lock and every home's claims
FILE_MODE = 0o644
HOST_NETWORK = "host"  # kiln run --network host: the host's own network, no kiln network
GRACE = 60.0  # a member this young may be a launch that has not made its folder yet


@dataclass
class Network:
    name: str
    bridge: str
    subnet: str = ""  # "" while it has no members
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> address, ports
    created: str = ""

    @property
    def net(self) -> IPv4Network:
        return IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.net.network_address + 1) if self.subnet else ""

    def addresses(self) -> dict[str, str]:
        return {name: str(member["address"]) for name, member in self.members.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": self.subnet or None,
            "bridge": self.bridge,
            "gateway": self.gateway or None,
            "members": {name: dict(m) for name, m in sorted(self.members.items())},
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return cls(
            name=str(data["name"]),
            bridge=str(data["bridge"]),
            subnet=str(data.get("subnet") or ""),
            members={str(k): dict(v) for k, v in dict(data.get("members") or {}).items()},
            created=str(data.get("created") or ""),
        )


def check_name(name: str) -> str:
    """A name a network may be given (kiln.lifecycle.fleetpolicy's rule, checked when
    its file is made; a file's name is never anything else)."""
    if name == HOST_NETWORK:
        raise BadInput(
            "'host' is not a network kiln makes: it is the host's own network",
            hint="choose another name; kiln run --network host shares the host's network",
        )
    from kiln.lifecycle.fleetpolicy import check_fleet_name  # pydantic: only for a new one

    try:
        return check_fleet_name(name, "network")
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def folder(home: Home) -> Path:
    return home.root / "networks"


def _path(home: Home, name: str) -> Path:
    if not name or "/" in name or name.startswith(".") or name == HOST_NETWORK:
        check_name(name)  # says why
    return folder(home) / f"{name}.json"


def load(home: Home, name: str) -> Network | None:
    path = _path(home, name)
    try:
        return Network.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise KilnError(
            f"{path} is damaged: {exc}", hint="kiln network rm NAME removes it"
        ) from None


def networks(home: Home) -> list[Network]:
    top = folder(home)
    names = sorted(p.stem for p in top.glob("*.json")) if top.is_dir() else []
    return [net for net in (load(home, name) for name in names) if net is not None]


def _save(home: Home, net: Network) -> None:
    make_dirs(folder(home))
    data = json.dumps(net.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(_path(home, net.name), data, FILE_MODE)


@contextmanager
def host_lock(host_dir: Path | None = None) -> Iterator[Path]:
    """The host-wide lock every change of every home's networks is made under."""
    top = HOST_DIR if host_dir is None else host_dir
    make_dirs(top)
    make_dirs(top / "subnets")
    with locks.locked(top / "networks.lock"):
        yield top


def choose_subnet(
    space: IPv4Network, taken: Iterable[IPv4Network], prefix: int = NETWORK_PREFIX
) -> IPv4Network | None:
    """The first /prefix of ``space`` that overlaps nothing in ``taken``."""
    held = list(taken)
    for candidate in space.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(other) for other in held):
            return candidate
    return None


def routed(routes_json: str) -> list[IPv4Network]:
    """The destinations of the host's IPv4 routes (``ip -4 -j route show table all``), but
    the default route, which overlaps everything and claims nothing."""
    out = []
    for route in json.loads(routes_json or "[]"):
        dst = str(route.get("dst", ""))
        if dst in ("", "default"):
            continue
        try:
            out.append(IPv4Network(dst, strict=False))
        except ValueError:
            continue
    return out


def host_routes() -> list[IPv4Network]:
    return routed(proc.output(["ip", "-4", "-j", "route", "show", "table", "all"]))


def _claim_file(top: Path, subnet: str) -> Path:
    return top / "subnets" / subnet.replace("/", "-")


def _claims(top: Path) -> dict[str, dict[str, str]]:
    """Subnet -> its claim (home, network), the stale ones left out."""
    out = {}
    for path in sorted((top / "subnets").iterdir()):
        try:
            claim = json.loads(path.read_text())
            owner = load(Home(Path(claim["home"])), str(claim["network"]))
        except (OSError, ValueError, KeyError, TypeError, KilnError):
            continue
        subnet = path.name.replace("-", "/")
        if owner is not None and owner.subnet == subnet and owner.members:
            out[subnet] = {"home": str(claim["home"]), "network": str(claim["network"])}
    return out


def _claim(top: Path, home: Home, net: Network) -> None:
    """Take ``net``'s subnet in the host's claims (refused if another home holds it)."""
    held = _claims(top).get(net.subnet)
    mine = {"home": str(home.root), "network": net.name}
    if held is not None and held != mine:
        raise KilnError(
            f"network {net.name}'s subnet {net.subnet} is held by network {held['network']} "
            f"of {held['home']} (since this host started again)",
            hint=f"remove its machines and the network (kiln network rm {net.name}), "
            "then run them again: a new subnet is chosen",
        )
    text = json.dumps(mine, sort_keys=True).encode() + b"\n"
    write_atomic(_claim_file(top, net.subnet), text, FILE_MODE)


def _unclaim(top: Path, home: Home, subnet: str) -> None:
    path = _claim_file(top, subnet)
    try:
        if json.loads(path.read_text()).get("home") == str(home.root):
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def create(home: Home, name: str) -> Network:
    """Make the network ``name`` (no subnet yet: its first machine takes one)."""
    check_name(name)
    with host_lock():
        if load(home, name) is not None:
            raise BadInput(f"network {name} exists", hint="kiln network ls lists the networks")
        return _new(home, name)


def _new(home: Home, name: str) -> Network:
    net = Network(name, netns.bridge_name(home.id, name), created=times.second(_now()))
    _save(home, net)
    return net


def _now() -> datetime:
    return datetime.now(UTC)


def _member_of(home: Home, machine: str) -> Network | None:
    return next((net for net in networks(home) if machine in net.members), None)


def _allocate(top: Path, home: Home, net: Network, space: IPv4Network) -> None:
    taken = host_routes() + [IPv4Network(s) for s in _claims(top)]
    taken += [n.net for n in networks(home) if n.subnet and n.name != net.name]
    chosen = choose_subnet(space, taken)
    if chosen is None:
        raise KilnError(
            f"no /{NETWORK_PREFIX} of {space} is free for network {net.name}: every one "
            "overlaps a route of this host or another network",
            hint="set a wider or other [network] range in the policy file (kiln.toml)",
        )
    net.subnet = str(chosen)


def _address(net: Network, machine: str, wanted: str = "") -> str:
    """``wanted`` when it is free (the machine's own counts as free), else the first free."""
    used = {address for name, address in net.addresses().items() if name != machine}
    hosts = list(net.net.hosts())[1:]  # .1 is the bridge's
    if wanted and wanted not in used and IPv4Address(wanted) in hosts:
        return wanted
    free = next((str(a) for a in hosts if str(a) not in used), None)
    if free is None:
        raise KilnError(
            f"network {net.name} ({net.subnet}) has no free address: it holds {len(used)} machines",
            hint="remove a machine of it, or put this one on another --network",
        )
    return free


def _all_forwards(home: Home, but: str = "") -> dict[str, list[Forward]]:
    return {
        name: [Forward.from_text(p) for p in member.get("ports", [])]
        for net in networks(home)
        for name, member in net.members.items()
        if name != but
    }


def join(
    home: Home,
    space: Callable[[], IPv4Network],
    name: str,
    machine: str,
    ports: tuple[str, ...] = (),
    address: str = "",
    again: bool = False,
) -> netns.Attachment:
    """Make ``machine`` a member of network ``name`` (made now if new; its subnet, of
    ``space()``, chosen now if it has none) with its host ``ports``, and make its bridge.
    ``again``: a stopped machine booted again (kiln start) keeps its place and its
    ``address``; a new machine whose name is a member already is refused, as is a host
    port another machine of this home forwards (BadInput)."""
    forwards = [parse_port(p) for p in ports]
    with host_lock() as top:
        current = _member_of(home, machine)
        if current is not None and (current.name != name or not again):
            raise BadInput(
                f"a machine named {machine} exists (on network {current.name})",
                hint=f"remove it first (kiln rm {machine}), or choose another --name",
            )
        check_free(machine, forwards, _all_forwards(home, but=machine))
        net = load(home, name) or _new(home, check_name(name))
        if not net.subnet:
            _allocate(top, home, net, space())
        keep = str(net.members.get(machine, {}).get("address", address))
        given = _address(net, machine, keep)
        net.members[machine] = {
            "address": given,
            "ports": [f.text for f in forwards],
            "veth": netns.veth_name(home.id, machine),  # its host end, named for gc
            "joined": time.time(),
        }
        _claim(top, home, net)
        _save(home, net)
        netns.ensure_bridge(net.bridge, net.gateway, net.net.prefixlen)
        _write_hosts(home, net, but=machine)
    return netns.Attachment(
        net.name,
        net.bridge,
        given,
        net.net.prefixlen,
        net.gateway,
        netns.hosts_text(net.addresses()),
        tuple(f.text for f in forwards),
    )


def leave(home: Home, machine: str) -> Network | None:
    """``machine`` is gone (kiln rm): its address is free, the other members' hosts files
    lose it, and with the last member the bridge goes and the subnet is given back."""
    with host_lock() as top:
        net = _member_of(home, machine)
        if net is None:
            return None
        del net.members[machine]
        if not net.members:
            netns.remove_link(net.bridge)
            _unclaim(top, home, net.subnet)
            net.subnet = ""
        _save(home, net)
        _write_hosts(home, net)
    return net


def remove(home: Home, name: str) -> Network:
    """``kiln network rm``: refused (BadInput) while machines are attached."""
    with host_lock() as top:
        net = load(home, name)
        if net is None:
            raise BadInput(f"no network named {name}", hint="kiln network ls lists the networks")
        if net.members:
            attached = ", ".join(sorted(net.members))
            raise BadInput(
                f"network {name} has machines attached: {attached}",
                hint=f"kiln rm {attached}, then kiln network rm {name}",
            )
        netns.remove_link(net.bridge)
        if net.subnet:
            _unclaim(top, home, net.subnet)
        _path(home, name).unlink()
    return net


def _write_hosts(home: Home, net: Network, but: str = "") -> None:
    """Rewrite, in place, the hosts file of every member that has one (not ``but``'s:
    its launch writes it)."""
    text = netns.hosts_text(net.addresses())
    for member in net.members:
        path = Folder.of(home, member).config / "hosts"
        if member != but and path.is_file():
            netns.write_hosts(path, text)


def sweep(home: Home, dry_run: bool) -> list[tuple[str, str]]:
    """This home's bridges no network with members holds, and members whose machine is
    gone altogether (kiln killed mid-launch, before it wrote a state file): (kind, what)."""
    out: list[tuple[str, str]] = []
    with host_lock() as top:
        nets = networks(home)
        for net in nets:
            gone = [
                m
                for m, member in net.members.items()
                if not Folder.of(home, m).path.is_dir()
                and time.time() - float(member.get("joined", 0)) > GRACE
            ]
            for member in gone:
                out.append(("member", f"{net.name}: {member}"))
                if not dry_run:
                    del net.members[member]
            if gone and not dry_run:
                if not net.members:
                    _unclaim(top, home, net.subnet)
                    net.subnet = ""
                _save(home, net)
                _write_hosts(home, net)
        held = {net.bridge for net in nets if net.members}
        for link in netns.links(netns.bridge_prefix(home.id)):
            if link not in held:
                out.append(("link", link))
                if not dry_run:
                    netns.remove_link(link)
    return out
