"""Machines on a kiln network for real: namespaces, a bridge, hosts files and nft forwards.

Traffic goes only to the addresses of the machines and bridges these tests make.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from typing import Any

from kiln.fleet.netports import table_name
from kiln.home import Home
from kiln.machines import netns
from tests.integration.conftest import Kiln


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def run_web(kiln: Kiln, name: str, net: str, *more: str, check: bool = True) -> Any:
    result = kiln.run(
        "run", "web", "--name", name, "--network", net,
        "--set", f"site_title=title of {name}", "--set", "api_token=t",
        *more, "--json", check=check,
    )  # fmt: skip
    return json.loads(result.stdout) if check else result


def row(kiln: Kiln, name: str) -> dict[str, Any]:
    [found] = [m for m in kiln.json("ps") if m["name"] == name]
    assert isinstance(found, dict)
    return found


def curl(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-fsS", "--max-time", "5", url], capture_output=True, text=True, check=False
    )


def host_names(home_id: str) -> dict[str, list[str]]:
    """What this home has made on the host: namespaces, links, nft tables."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return {
        "netns": netns.namespaces(netns.netns_prefix(home_id)),
        "links": netns.links(f"kb{home_id}") + netns.links(f"kv{home_id}"),
        "nft": [line for line in tables.splitlines() if table_name(home_id) in line],
    }


def wait_healthy_curl(url: str, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        result = curl(url)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout
        time.sleep(0.1)


def test_machines_of_a_network_reach_each_other_by_name_and_a_port_from_the_host(
    baked: Kiln, machines: list[str]
) -> None:
    home_id = Home(baked.home).id
    net, a, b = unique("net"), unique("a"), unique("b")
    port = 20000 + secrets.randbelow(20000)
    machines += [a, b]
    run_web(baked, a, net, "--wait")
    run_web(baked, b, net, "--wait", "--port", f"{port}:80")
    rows = {name: row(baked, name) for name in (a, b)}
    assert {r["network"] for r in rows.values()} == {net}
    assert rows[b]["ports"] == [f"{port}:80/tcp"]
    [forward] = rows[b]["forwards"]
    gateway = forward["reach"].rsplit(":", 1)[0]
    assert gateway.endswith(".1") and rows[b]["address"].rsplit(".", 1)[0] == gateway[:-2]

    page = baked.run("exec", a, "--", "curl", "-fsS", "--max-time", "5", f"http://{b}/").stdout
    assert f"title of {b}" in page  # by name, through a's /etc/hosts
    assert f"title of {b}" in wait_healthy_curl(f"http://{forward['reach']}/")  # DNAT
    assert curl(f"http://127.0.0.1:{port}/").returncode != 0  # DNAT never answers there

    taken = run_web(baked, unique("c"), net, "--port", f"{port}:80", check=False)
    assert taken.returncode == 2 and f"forwarded to machine {b}" in taken.stderr
    attached = baked.run("network", "rm", net, check=False)
    assert attached.returncode == 2 and a in attached.stderr and b in attached.stderr

    baked.run("stop", b)
    assert row(baked, b)["state"] == "stopped"
    assert not os.path.lexists(netns.netns_path(home_id, b))
    baked.run("start", b, "--set", "api_token=t", "--wait")
    assert row(baked, b)["address"] == rows[b]["address"]  # kept across the restart
    again = baked.run("exec", a, "--", "curl", "-fsS", "--max-time", "5", f"http://{b}/")
    assert f"title of {b}" in again.stdout
    assert f"title of {b}" in wait_healthy_curl(f"http://{forward['reach']}/")

    baked.run("rm", a)
    hosts = baked.run("exec", b, "--", "cat", "/etc/hosts").stdout
    assert a not in hosts and b in hosts and "localhost" in hosts  # rewritten in place
    baked.run("rm", b)
    baked.run("network", "rm", net)
    assert net not in [n["name"] for n in baked.json("network", "ls")]
    left = host_names(home_id)
    assert not [n for n in left["netns"] if n.endswith((a, b))]
    assert netns.bridge_name(home_id, net) not in left["links"]
    assert not {netns.veth_name(home_id, m) for m in (a, b)} & set(left["links"])
    assert left["nft"] == []


def test_gc_takes_what_a_killed_machine_left(baked: Kiln, machines: list[str]) -> None:
    home_id = Home(baked.home).id
    net, name = unique("net"), unique("k")
    port = 20000 + secrets.randbelow(20000)
    machines.append(name)
    run_web(baked, name, net, "--port", f"{port}:80")
    pid = row(baked, name)["nspawn_pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.lexists(netns.netns_path(home_id, name))  # what the kill left
    assert host_names(home_id)["nft"]

    report = baked.json("gc")
    kinds = {(item["kind"], item["path"]) for item in report["items"]}
    assert ("netns", str(netns.netns_path(home_id, name))) in kinds
    assert not os.path.lexists(netns.netns_path(home_id, name))
    assert netns.veth_name(home_id, name) not in host_names(home_id)["links"]
    assert host_names(home_id)["nft"] == []
    assert row(baked, name)["address"]  # a stopped machine keeps its address

    baked.run("rm", name)
    baked.run("network", "rm", net)
    left = host_names(home_id)
    assert netns.bridge_name(home_id, net) not in left["links"] and left["nft"] == []
