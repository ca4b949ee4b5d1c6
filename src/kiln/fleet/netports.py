"""Host ports forwarded to machines: ``--port [HOST_IP:]HOST_PORT:MACHINE_PORT[/tcp|udp]``.

Each home has one nftables table of its own, ``table ip kiln_<home id>``, holding a DNAT
rule per forward in a ``prerouting`` chain (connections from other hosts and namespaces)
and an ``output`` chain (connections from this host itself) to the machine's address; a
HOST_IP, when given, is matched as the destination, otherwise any address of the host but
loopback. The whole table is written again at once (``nft -f``: made, deleted and made
anew in one transaction) from the forwards of the machines that run, whenever a machine
starts, stops or goes, and by ``kiln gc``; with none it is deleted. nspawn's own ``--port``
is not used: its rules sit in systemd's table shared by every machine of the host, and a
SIGKILLed nspawn leaves them there.

DNAT does not answer on 127.0.0.1 (a packet to loopback cannot leave it for a bridge): a
forward is reached at any other address of the host, such as the network's bridge address
(``kiln ps`` shows it with the port). Connections from other hosts need the host to forward
IPv4 (``net.ipv4.ip_forward=1``), which kiln leaves as the host has it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from kiln import locks, proc
from kiln.errors import BadInput, KilnError
from kiln.home import Home
from kiln.machines import process
from kiln.machines.folder import each
from kiln.proc import CommandError

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# dstnat + 1, after the host's own DNAT rules (nft knows the name dstnat in prerouting only)
PRIORITY = "-99"


@dataclass(frozen=True)
class Forward:
    host_ip: str | None
    host_port: int
    machine_port: int
    protocol: str = "tcp"

    @property
    def text(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.machine_port}/{self.protocol}"

    @classmethod
    def from_text(cls, text: str) -> Forward:
        """A forward as :attr:`text` wrote it (a state's, a registry's: checked already)."""
        rest, _slash, protocol = text.partition("/")
        *ip, host_port, machine_port = rest.split(":")
        return cls(ip[0] if ip else None, int(host_port), int(machine_port), protocol or "tcp")

    def clashes(self, other: Forward) -> bool:
        """Both would take one host port: same protocol and port, and one address."""
        same_ip = self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip
        return self.protocol == other.protocol and self.host_port == other.host_port and same_ip


def parse_port(value: str) -> Forward:
    """``[HOST_IP:]HOST_PORT:MACHINE_PORT[/tcp|udp]`` (BadInput, exit 2, otherwise)."""
    from kiln.lifecycle.fleetpolicy import parse_port_range  # pydantic: only for a --port

    try:
        span = parse_port_range(value)
    except ValueError as exc:
        raise BadInput(
            f"--port {value}: {exc}",
            hint="give --port [HOST_IP:]HOST_PORT:MACHINE_PORT[/tcp|udp], e.g. 8080:80",
        ) from None
    if span.first != span.last:
        raise BadInput(
            f"--port {value}: one machine forwards one host port per mapping, not a range",
            hint="give each port as its own --port (a group's ports may be a range)",
        )
    if span.host_ip is not None and ipaddress.IPv4Address(span.host_ip) in LOOPBACK:
        raise BadInput(
            f"--port {value}: a forward does not answer on {span.host_ip} (DNAT does not "
            "take connections to loopback to another interface)",
            hint="leave HOST_IP out, or give another address of this host; from the host, "
            "connect to the network's bridge address with the host port (kiln ps shows it)",
        )
    return Forward(span.host_ip, span.first, span.machine_port, span.protocol)


def check_free(machine: str, wanted: Iterable[Forward], others: dict[str, list[Forward]]) -> None:
    """BadInput when a host port of ``wanted`` is taken by another machine of this home
    (``others``: machine -> its forwards), or twice by ``machine`` itself."""
    mine: list[Forward] = []
    for forward in wanted:
        for other, theirs in sorted(others.items()):
            if any(forward.clashes(t) for t in theirs):
                raise BadInput(
                    f"--port {forward.text}: host port {forward.host_port}/{forward.protocol} "
                    f"is forwarded to machine {other} already",
                    hint=f"choose another host port, or kiln rm {other}",
                )
        if any(forward.clashes(m) for m in mine):
            raise BadInput(f"--port {forward.text}: host port {forward.host_port} is given twice")
        mine.append(forward)


def table_name(home_id: str) -> str:
    return f"kiln_{home_id}"


def _rule(forward: Forward, address: str, machine: str, output: bool) -> str:
    if forward.host_ip:
        match = f"ip daddr {forward.host_ip}"
    elif output:
        match = f'ip daddr != {LOOPBACK} oif "lo"'  # to an address of this host
    else:
        match = "fib daddr type local"
    return (
        f"{match} {forward.protocol} dport {forward.host_port} "
        f'dnat to {address}:{forward.machine_port} comment "{machine}"'
    )


def ruleset(home_id: str, forwards: dict[str, tuple[str, list[Forward]]]) -> str:
    """The ``nft -f`` text that makes this home's table hold exactly ``forwards``
    (machine -> its address and forwards); with none, the table goes."""
    table = f"table ip {table_name(home_id)}"
    lines = [table, f"delete {table}"]  # made first, so the delete never fails
    rules = [
        (machine, address, forward)
        for machine, (address, items) in sorted(forwards.items())
        for forward in items
    ]
    if not rules:
        return "\n".join(lines) + "\n"
    lines.append(f"{table} {{")
    for chain, hook, output in (("prerouting", "prerouting", False), ("output", "output", True)):
        lines.append(f"\tchain {chain} {{")
        lines.append(f"\t\ttype nat hook {hook} priority {PRIORITY}; policy accept;")
        lines += [f"\t\t{_rule(f, address, m, output)}" for m, address, f in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(text: str) -> None:
    try:
        proc.run(["nft", "-f", "-"], input=text.encode())
    except FileNotFoundError:
        raise KilnError(
            "nft is not installed: kiln forwards host ports with nftables",
            hint="apt-get install nftables (scripts/setup installs it)",
        ) from None


def forwarded(home_id: str) -> list[str]:
    """The machines this home's table forwards ports to now (its rules' comments)."""
    try:
        text = proc.output(["nft", "-j", "list", "table", "ip", table_name(home_id)])
    except (CommandError, FileNotFoundError):
        return []
    names = set()
    for item in json.loads(text or "{}").get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict) and rule.get("comment"):
            names.add(str(rule["comment"]))
    return sorted(names)


def running_forwards(home: Home) -> dict[str, tuple[str, list[Forward]]]:
    """The forwards of this home's machines that run: machine -> (address, forwards)."""
    return {
        state.name: (state.address, [Forward.from_text(p) for p in state.ports])
        for _folder, state in each(home)
        if state is not None and state.ports and state.address and process.running(state)
    }


def refresh(home: Home) -> list[str]:
    """Write this home's table again from its running machines' forwards (when it has,
    or had, any); return the machines whose rules went."""
    with locks.locked(home.locks / "nft.lock"):
        wanted = running_forwards(home)
        before = forwarded(home.id)
        if wanted or before:
            apply(ruleset(home.id, wanted))
    return [name for name in before if name not in wanted]
