"""A machine's own network namespace, made before it boots, and the host ends it plugs into.

kiln prepares the namespace itself and hands it to systemd-nspawn
(``--network-namespace-path=/run/netns/NS --private-network``): nspawn's own
``--network-veth`` and ``--network-bridge`` make links but give them no address (the host
has no networkd), and a namespace made beforehand lets the machine's units see their
address from the first moment of the boot. Before the boot:

    ip netns add NS
    ip link add VETH type veth peer name host0 netns NS; VETH into the bridge, up
    in NS: ADDRESS/PREFIX on host0, lo and host0 up, default route via the bridge

After nspawn exits the namespace goes (and the veth with it); ``kiln start`` makes it again
with the address the machine keeps. The bridge, its address and the machine's address come
from the caller (kiln.fleet.network owns networks and their subnets).

Every name here is host-wide, so every one carries the home's id (kiln.home.Home.id):
namespaces ``kiln-<id>-<machine>``, veths ``kv<id><hash>`` and bridges ``kb<id><hash>``
(interface names are at most 15 characters, so a short sha256 of the machine's or the
network's name stands in for it; the names are recorded by their owners).

Machines find each other by name through a hosts file kiln writes for each one (bound
read-only at /etc/hosts), not through nspawn's resolver: that answers from systemd-machined
and systemd-resolved over the system bus, and this host has no system bus (machines are
never registered, ``--register=no``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import KilnError

NETNS_DIR = Path("/run/netns")
IFNAME_MAX = 15  # IFNAMSIZ - 1
PEER = "host0"  # the machine's end, as nspawn names it
HOSTS_MODE = 0o644
LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
)


def _hash(name: str, size: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:size]


def _ifname(prefix: str, home_id: str, name: str) -> str:
    room = IFNAME_MAX - len(prefix) - len(home_id)
    return f"{prefix}{home_id}{_hash(name, room)}"


def veth_name(home_id: str, machine: str) -> str:
    """The host end of machine ``machine``'s veth: ``kv``, the home's id, 5 hex."""
    return _ifname("kv", home_id, machine)


def bridge_name(home_id: str, network: str) -> str:
    """The bridge of network ``network``: ``kb``, the home's id, 5 hex."""
    return _ifname("kb", home_id, network)


def mac_address(home_id: str, machine: str, end: str) -> str:
    """A fixed, locally administered MAC for one end (``host`` or ``machine``) of the
    machine's veth, as nspawn derives its own from the machine's name: a restarted machine
    answers at its old MAC, so its neighbours' ARP caches stay right."""
    raw = bytearray(hashlib.sha256(f"{home_id}/{machine}/{end}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{byte:02x}" for byte in raw)


def netns_name(home_id: str, machine: str) -> str:
    return f"kiln-{home_id}-{machine}"


def netns_path(home_id: str, machine: str) -> Path:
    return NETNS_DIR / netns_name(home_id, machine)


def veth_prefix(home_id: str) -> str:
    return f"kv{home_id}"


def bridge_prefix(home_id: str) -> str:
    return f"kb{home_id}"


def netns_prefix(home_id: str) -> str:
    return f"kiln-{home_id}-"


@dataclass(frozen=True)
class Attachment:
    """Where a machine plugs in: what kiln.fleet.network decided for it."""

    network: str
    bridge: str  # the host's bridge (it exists already)
    address: str  # the machine's IPv4 address
    prefix: int  # of the network's subnet
    gateway: str  # the bridge's address: the machine's default route
    hosts: str  # /etc/hosts for the machine: every member of the network by name
    ports: tuple[str, ...] = ()  # forwards kept in its state (kiln.fleet.netports applies them)


def _batch(lines: Sequence[str], netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc.run(argv, input="".join(f"{line}\n" for line in lines).encode())


def prepare(home_id: str, machine: str, link: Attachment) -> Path:
    """Make machine ``machine``'s namespace with its address and route, plugged into the
    bridge; return its path for nspawn. Whatever was left of an earlier one goes first."""
    remove(home_id, machine)
    ns, veth = netns_name(home_id, machine), veth_name(home_id, machine)
    proc.run(["ip", "netns", "add", ns])
    try:
        _batch(
            [
                f"link add {veth} address {mac_address(home_id, machine, 'host')} type veth "
                f"peer name {PEER} address {mac_address(home_id, machine, 'machine')} netns {ns}",
                f"link set {veth} master {link.bridge}",
                f"link set {veth} up",
            ]
        )
        _batch(
            [
                f"address add {link.address}/{link.prefix} dev {PEER}",
                "link set lo up",
                f"link set {PEER} up",
                f"route add default via {link.gateway} dev {PEER}",
            ],
            ns,
        )
    except KilnError:
        remove(home_id, machine)
        raise
    return netns_path(home_id, machine)


def remove(home_id: str, machine: str) -> bool:
    """Remove the machine's namespace and its veth (the veth first: the kernel takes a
    veth down with its namespace only later). True if the namespace was there."""
    path = netns_path(home_id, machine)
    if not os.path.lexists(path):
        return False
    proc.run(["ip", "link", "delete", veth_name(home_id, machine)], check=False)
    proc.run(["ip", "netns", "delete", path.name], check=False)
    return True


def links(prefix: str = "") -> list[str]:
    """The host's interface names that start with ``prefix``."""
    data = json.loads(proc.output(["ip", "-j", "link", "show"]) or "[]")
    return sorted(str(item["ifname"]) for item in data if str(item["ifname"]).startswith(prefix))


def namespaces(prefix: str) -> list[str]:
    """The named network namespaces (``/run/netns``) that start with ``prefix``."""
    try:
        return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))
    except OSError:
        return []


def ensure_bridge(name: str, address: str, prefix: int) -> bool:
    """The bridge ``name`` with ``address/prefix``, up; True if it was made now."""
    if name in links(name):
        proc.run(["ip", "address", "replace", f"{address}/{prefix}", "dev", name])
        proc.run(["ip", "link", "set", name, "up"])
        return False
    _batch(
        [
            f"link add {name} type bridge",
            f"address add {address}/{prefix} dev {name}",
            f"link set {name} up",
        ]
    )
    return True


def remove_link(name: str) -> bool:
    """Delete the interface ``name`` (a bridge, a veth); True if it was there."""
    if name not in links(name):
        return False
    proc.run(["ip", "link", "delete", name], check=False)
    return True


def hosts_text(members: dict[str, str]) -> str:
    """/etc/hosts of a network's machines: the localhost lines, then each member's address
    and name (``members``: name -> address), the machine's own among them."""
    lines = [*LOCALHOST_LINES]
    lines += [f"{address}\t{name}" for name, address in sorted(members.items())]
    return "# written by kiln: the machines of this network\n" + "\n".join(lines) + "\n"


def write_hosts(path: Path, text: str) -> None:
    """Rewrite the machine's hosts file in place: the running machine's /etc/hosts is a
    bind mount of this very inode, so a rename would leave it reading the old file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, HOSTS_MODE)
    try:
        os.fchmod(fd, HOSTS_MODE)
        data = text.encode()
        os.pwrite(fd, data, 0)  # over the old text, then cut: never an empty file between
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
