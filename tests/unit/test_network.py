"""Networks without the host: subnet choice, names, hosts files, ports and nft text."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from kiln.errors import BadInput
from kiln.fleet import network
from kiln.fleet.netports import Forward, check_free, parse_port, ruleset, table_name
from kiln.home import Home
from kiln.machines import netns
from kiln.sandbox import Boot

ROUTES = json.dumps(
    [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "10.231.0.0/24", "dev": "docker0"},
        {"dst": "10.231.2.7", "dev": "tun0"},
        {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
    ]
)


def test_host_routes_but_the_default_one_are_taken() -> None:
    taken = network.routed(ROUTES)
    assert IPv4Network("0.0.0.0/0") not in taken
    assert IPv4Network("10.231.0.0/24") in taken and IPv4Network("10.231.2.7/32") in taken


def test_a_subnet_skips_host_routes_and_other_networks() -> None:
    space = IPv4Network("10.231.0.0/16")
    taken = [*network.routed(ROUTES), IPv4Network("10.231.1.0/24")]
    assert network.choose_subnet(space, taken) == IPv4Network("10.231.3.0/24")
    assert network.choose_subnet(space, [IPv4Network("10.231.0.0/17")]) == IPv4Network(
        "10.231.128.0/24"
    )
    assert network.choose_subnet(IPv4Network("10.9.0.0/24"), [IPv4Network("10.0.0.0/8")]) is None


def test_interface_names_fit_the_kernel_and_carry_the_home() -> None:
    home_id = Home(Path("/var/lib/kiln")).id
    long = "m" * 63
    for name in (netns.veth_name(home_id, long), netns.bridge_name(home_id, "a" * 31)):
        assert len(name) <= netns.IFNAME_MAX == 15
    assert netns.veth_name(home_id, "web").startswith(netns.veth_prefix(home_id))
    assert netns.bridge_name(home_id, "kiln").startswith(netns.bridge_prefix(home_id))
    assert netns.veth_name(home_id, "web") != netns.veth_name(home_id, "web2")
    other = Home(Path("/srv/kiln")).id
    assert netns.veth_name(home_id, "web") != netns.veth_name(other, "web")
    assert netns.netns_name(home_id, "web") == f"kiln-{home_id}-web"


def test_hosts_text_has_localhost_and_every_member() -> None:
    text = netns.hosts_text({"web": "10.231.0.2", "db": "10.231.0.3"})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[1].startswith("::1\tlocalhost")
    assert lines[-2:] == ["10.231.0.3\tdb", "10.231.0.2\tweb"]


def test_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    netns.write_hosts(path, netns.hosts_text({"a": "10.0.0.2", "bb": "10.0.0.3"}))
    inode = path.stat().st_ino
    netns.write_hosts(path, netns.hosts_text({"a": "10.0.0.2"}))
    assert path.stat().st_ino == inode  # a bind mount of it sees the new text
    assert path.read_text() == netns.hosts_text({"a": "10.0.0.2"})
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("value", "forward"),
    [
        ("8080:80", Forward(None, 8080, 80, "tcp")),
        ("192.0.2.2:53:53/udp", Forward("192.0.2.2", 53, 53, "udp")),
    ],
)
def test_ports_parse_and_print_back(value: str, forward: Forward) -> None:
    assert parse_port(value) == forward
    assert Forward.from_text(forward.text) == forward


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("80", "not a port mapping"),
        ("0:80", "1-65535"),
        ("8080-8081:80", "not a range"),
        ("127.0.0.1:8080:80", "does not answer on 127.0.0.1"),
        ("8080:80/sctp", "not a port mapping"),
    ],
)
def test_bad_ports_are_refused(value: str, says: str) -> None:
    with pytest.raises(BadInput, match=says) as caught:
        parse_port(value)
    assert caught.value.exit_code == 2


def test_a_host_port_taken_by_another_machine_is_refused() -> None:
    others = {"web": [Forward(None, 8080, 80)], "dns": [Forward("192.0.2.2", 53, 53, "udp")]}
    with pytest.raises(BadInput, match="forwarded to machine web"):
        check_free("new", [Forward("192.0.2.9", 8080, 81)], others)
    with pytest.raises(BadInput, match="given twice"):
        check_free("new", [Forward(None, 9000, 80), Forward(None, 9000, 81)], others)
    check_free("new", [Forward(None, 8080, 80, "udp"), Forward("192.0.2.3", 53, 53, "udp")], others)


def test_nft_ruleset_forwards_each_port_and_deletes_an_empty_table() -> None:
    text = ruleset(
        "0a1b2c3d",
        {
            "web": ("10.231.0.2", [Forward(None, 8080, 80)]),
            "dns": ("10.231.0.3", [Forward("192.0.2.2", 53, 53, "udp")]),
        },
    )
    table = f"table ip {table_name('0a1b2c3d')}"
    assert text.startswith(f"{table}\ndelete {table}\n{table} {{\n")
    assert "type nat hook prerouting priority -99; policy accept;" in text
    assert 'fib daddr type local tcp dport 8080 dnat to 10.231.0.2:80 comment "web"' in text
    assert 'ip daddr != 127.0.0.0/8 oif "lo" tcp dport 8080 dnat to 10.231.0.2:80' in text
    assert text.count('ip daddr 192.0.2.2 udp dport 53 dnat to 10.231.0.3:53 comment "dns"') == 2
    assert ruleset("0a1b2c3d", {}) == f"{table}\ndelete {table}\n"


def test_boot_uses_the_prepared_namespace_or_the_host_network() -> None:
    private = Boot(Path("/r"), "web", "0a1b2c3d", netns=Path("/run/netns/kiln-0a1b2c3d-web"))
    argv = private.argv()
    assert "--network-namespace-path=/run/netns/kiln-0a1b2c3d-web" in argv
    assert "--private-network" in argv
    shared = Boot(Path("/r"), "web", "0a1b2c3d", private_network=False).argv()
    assert not any(arg.startswith(("--private-network", "--network-")) for arg in shared)


def test_network_names_are_checked_before_a_file_is_named(home: Home) -> None:
    for bad in ("host", "../x", "Web", ""):
        with pytest.raises(BadInput):
            network.check_name(bad)
    with pytest.raises(BadInput):
        network.load(home, "../../etc/passwd")


def test_a_machine_keeps_its_address_and_a_new_one_takes_the_first_free() -> None:
    net = network.Network("kiln", "kb", "10.231.4.0/24")
    net.members = {"a": {"address": "10.231.4.2"}, "b": {"address": "10.231.4.4"}}
    assert network._address(net, "b", "10.231.4.4") == "10.231.4.4"  # kiln start
    assert network._address(net, "c") == "10.231.4.3"
    assert network._address(net, "c", "10.231.4.2") == "10.231.4.3"  # a's, not c's


def test_a_machine_keeps_its_mac_across_restarts() -> None:
    mac = netns.mac_address("0a1b2c3d", "web", "machine")
    assert mac == netns.mac_address("0a1b2c3d", "web", "machine")
    assert mac != netns.mac_address("0a1b2c3d", "web", "host")
    assert int(mac[:2], 16) & 0x03 == 0x02  # unicast, locally administered


def test_two_homes_never_pick_one_subnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host-wide claims, not the bridges, keep two homes apart: the bridge calls are
    left out (no root here), the host's routes are a fixed list."""
    monkeypatch.setattr(network, "HOST_DIR", tmp_path / "run")
    monkeypatch.setattr(network, "host_routes", lambda: [IPv4Network("10.231.0.0/24")])
    monkeypatch.setattr(netns, "ensure_bridge", lambda *_args: True)
    monkeypatch.setattr(netns, "remove_link", lambda _name: True)
    space = IPv4Network("10.231.0.0/16")
    first, second = Home(tmp_path / "one"), Home(tmp_path / "two")
    a = network.join(first, lambda: space, "kiln", "web", ("8080:80",))
    b = network.join(second, lambda: space, "kiln", "web", ("8080:80",))  # another home
    assert (a.address, b.address) == ("10.231.1.2", "10.231.2.2")
    assert a.gateway == "10.231.1.1" and a.prefix == 24 and "10.231.1.2\tweb" in a.hosts
    with pytest.raises(BadInput, match="forwarded to machine web"):
        network.join(first, lambda: space, "kiln", "db", ("8080:80",))
    with pytest.raises(BadInput, match="exists"):
        network.join(first, lambda: space, "kiln", "web")
    again = network.join(first, lambda: space, "kiln", "web", ("8080:80",), a.address, again=True)
    assert again.address == a.address
    with pytest.raises(BadInput, match="has machines attached: web"):
        network.remove(first, "kiln")
    network.leave(first, "web")
    held = network.load(first, "kiln")
    assert held is not None and held.subnet == "" and held.members == {}
    c = network.join(Home(tmp_path / "three"), lambda: space, "kiln", "web")
    assert c.address == "10.231.1.2"  # given back by the first home
    assert network.remove(first, "kiln").name == "kiln"
