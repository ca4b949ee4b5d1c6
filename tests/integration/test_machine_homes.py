"""Two KILN_HOMEs on one host each run a machine of the same name, both at once, each in a
cgroup and an nspawn propagate folder of its own home.

The second home holds the session store's images (hard links and a catalog copy), so no
image is baked again; the machines boot base, the cheapest image with systemd.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import cgroups
from kiln.home import Home
from kiln.machines.leftovers import PROPAGATE
from kiln.sandbox import machine_cgroup, machine_name
from tests.integration.conftest import Kiln


@pytest.fixture
def second(baked: Kiln, tmp_path: Path) -> Iterator[Kiln]:
    """A KILN_HOME of the test's own with the session store's images; its machines are
    removed afterwards, even when the test failed with them running."""
    home = tmp_path / "home"
    home.mkdir()
    for folder in ("oci", "layers"):
        subprocess.run(["cp", "-al", str(baked.home / folder), str(home)], check=True)
    source, target = (
        sqlite3.connect(baked.home / "catalog.db"),
        sqlite3.connect(home / "catalog.db"),
    )
    source.backup(target)
    source.close()
    target.close()
    kiln = Kiln(home)
    yield kiln
    machines = home / "machines"
    for machine in sorted(machines.iterdir()) if machines.is_dir() else []:
        kiln.run("rm", "--force", "--volumes", machine.name, check=False)


def leader(kiln: Kiln, name: str) -> int:
    [row] = [m for m in kiln.json("ps") if m["name"] == name]
    pid = row["leader_pid"]
    assert isinstance(pid, int)
    return pid


def state(kiln: Kiln, name: str) -> str:
    return kiln.run("exec", name, "--", "systemctl", "is-system-running").stdout.strip()


def test_two_homes_run_a_machine_of_one_name_at_once(
    baked: Kiln, second: Kiln, machines: list[str]
) -> None:
    name = f"twin-{secrets.token_hex(3)}"
    machines.append(name)
    homes = [baked, second]
    ids = [Home(kiln.home).id for kiln in homes]
    assert ids[0] != ids[1]
    for kiln in homes:
        kiln.run("run", "base", "--name", name, "--wait")
    assert [state(kiln, name) for kiln in homes] == ["running", "running"]
    for kiln, home_id in zip(homes, ids, strict=True):
        group = machine_cgroup(home_id, name)
        assert f"/kiln/{group}/payload" in Path(f"/proc/{leader(kiln, name)}/cgroup").read_text()
        assert cgroups.in_use(group)
        assert (PROPAGATE / machine_name(home_id, name)).is_dir()
        assert inside_hostname(kiln, name) == name
    first, other = (machine_cgroup(home_id, name) for home_id in ids)
    assert pids(first) and pids(other) and not pids(first) & pids(other)

    second.run("gc")  # never another home's
    second.run("rm", name)
    assert not any(folder.exists() for folder in cgroups.folders(other))
    assert not (PROPAGATE / machine_name(ids[1], name)).exists()
    assert state(baked, name) == "running", "removing the other home's machine touched this one"
    assert cgroups.in_use(first) and (PROPAGATE / machine_name(ids[0], name)).is_dir()

    baked.run("rm", name)
    assert not any(folder.exists() for folder in cgroups.folders(first))
    assert not (PROPAGATE / machine_name(ids[0], name)).exists()


def pids(group: str) -> set[str]:
    """Every process in the cgroup and below it (systemd's own hierarchy)."""
    found: set[str] = set()
    for folder, _dirs, files in os.walk(cgroups.folders(group)[0]):
        if "cgroup.procs" in files:
            found |= set(Path(folder, "cgroup.procs").read_text().split())
    return found


def inside_hostname(kiln: Kiln, name: str) -> str:
    return kiln.run("exec", name, "--", "hostname").stdout.strip()
