"""Networks: ``kiln network ls|create|rm``, and what a machine's run, start, stop and rm do
to the network it is on (kiln.fleet.network: its subnet, address and hosts files;
kiln.fleet.netports: its forwarded host ports), and ``kiln gc``'s share of them."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

from kiln.app.workspace import Workspace
from kiln.fleet import netports, network
from kiln.home import Home
from kiln.machines import leftovers, netns
from kiln.machines.folder import State
from kiln.store.gc import Item

HOST = network.HOST_NETWORK


def _space(home: Home) -> IPv4Network:
    """The policy's ``[network] range``; without a policy file the default, without loading
    the policy's models (kiln run of a network's first machine stays quick)."""
    from kiln.lifecycle.policyfile import locate

    if locate(home) is None:
        from kiln.lifecycle.fleetdefaults import DEFAULT_RANGE

        return IPv4Network(DEFAULT_RANGE)
    from kiln.lifecycle import policy

    return policy.find(home).network.network


def attach(home: Home, machine: str, name: str, ports: tuple[str, ...]) -> netns.Attachment | None:
    """Where a new machine plugs in: None for loopback only ("") or the host's network."""
    if name in ("", HOST):  # --port is refused there by the launch
        return None
    return network.join(home, lambda: _space(home), name, machine, ports)


def attach_again(home: Home, state: State) -> netns.Attachment | None:
    """A stopped machine's place again (kiln start): its network, address and ports."""
    if state.network in ("", HOST):
        return None
    return network.join(
        home,
        lambda: _space(home),
        state.network,
        state.name,
        tuple(state.ports),
        state.address,
        again=True,
    )


def detach(home: Home, machine: str) -> None:
    """The machine is gone: its address, hosts lines and forwards go too."""
    network.leave(home, machine)
    netports.refresh(home)


def forwards(home: Home) -> None:
    netports.refresh(home)


def reach(home: Home) -> dict[str, dict[str, Any]]:
    """Per machine: its network's bridge address, and where each forwarded port is
    reached from this host (HOST_IP, or the bridge address, with the host port)."""
    out: dict[str, dict[str, Any]] = {}
    for net in network.networks(home):
        for name, member in net.members.items():
            reached = []
            for text in member.get("ports", []):
                forward = netports.Forward.from_text(text)
                where = forward.host_ip or net.gateway
                reached.append({"port": text, "reach": f"{where}:{forward.host_port}"})
            out[name] = {"gateway": net.gateway, "forwards": reached}
    return out


def ls(workspace: Workspace) -> list[dict[str, Any]]:
    return [net.to_json() for net in network.networks(workspace.home)]


def create(workspace: Workspace, name: str) -> dict[str, Any]:
    return network.create(workspace.home, name).to_json()


def rm(workspace: Workspace, name: str) -> dict[str, Any]:
    """Remove a network with no machines attached (BadInput naming them otherwise)."""
    return network.remove(workspace.home, name).to_json()


def sweep(home: Home, dry_run: bool) -> list[Item]:
    """kiln gc: this home's namespaces, veths, bridges and forwards no machine holds."""
    items = leftovers.sweep_netns(home, dry_run)
    items += [Item(kind, what, 0) for kind, what in network.sweep(home, dry_run)]
    if dry_run:
        running = netports.running_forwards(home)
        gone = [m for m in netports.forwarded(home.id) if m not in running]
    else:
        gone = netports.refresh(home)
    items += [Item("nft", f"{netports.table_name(home.id)}: {m}", 0) for m in gone]
    return items
