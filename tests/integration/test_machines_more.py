"""Machines after their first boot: start, rm --force, ps in a pipe, secrets off the command
line, and the host name of a machine from an imported root.

Each test removes the machines it made (volumes too), even when it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

from kiln import cgroups
from kiln.home import Home
from kiln.sandbox import machine_cgroup
from tests.integration.conftest import Kiln


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def kiln_with_input(kiln: Kiln, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(kiln.argv(*args), env=kiln.env(), input=data, capture_output=True)


def inside(kiln: Kiln, name: str, *command: str) -> str:
    return kiln.run("exec", name, "--", *command).stdout


def token_digest(kiln: Kiln, name: str) -> str:
    """What web's token service wrote: the sha256 of the credential it was given."""
    return inside(kiln, name, "cat", "/run/web/token.sha256")


def row(kiln: Kiln, name: str) -> dict[str, object]:
    [found] = [m for m in kiln.json("ps") if m["name"] == name]
    assert isinstance(found, dict)
    return found


def test_secrets_from_stdin_and_a_file_start_keeps_changes(
    baked: Kiln, machines: list[str], tmp_path: Path
) -> None:
    name, token = unique("web"), secrets.token_hex(24)
    machines.append(name)
    launched = kiln_with_input(
        baked, token.encode() + b"\n",
        "run", "web", "--name", name, "--set", "site_title=Start", "--set", "api_token=-",
        "--wait", "--json",
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr.decode()
    assert json.loads(launched.stdout)["health"]["ok"]
    assert token_digest(baked, name) == hashlib.sha256(token.encode()).hexdigest(), (
        "one trailing newline of standard input is dropped"
    )
    nspawn = row(baked, name)["nspawn_pid"]
    assert token.encode() not in Path(f"/proc/{nspawn}/cmdline").read_bytes()

    # kiln ps in a pipe (no COLUMNS): whole rows, the volume's full path included
    env = {k: v for k, v in baked.env().items() if k != "COLUMNS"}
    listed = subprocess.run(baked.argv("ps"), env=env, capture_output=True, text=True, check=True)
    volume = row(baked, name)["volumes"]
    assert isinstance(volume, dict)
    [line] = [ln for ln in listed.stdout.splitlines() if name in ln]
    assert f"/var/lib/web={volume['/var/lib/web']}" in line and len(line.rstrip()) > 80, line

    inside(baked, name, "sh", "-c", "echo kept > /root/own-change")
    baked.run("stop", name)
    assert row(baked, name)["state"] == "stopped"

    refused = baked.run("start", name, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "api_token: secret is missing" in refused.stderr
    assert "--set api_token=@FILE" in refused.stderr
    plain = baked.run(
        "start", name, "--set", "site_title=Other", "--set", "api_token=x", check=False
    )
    assert plain.returncode == 2 and "site_title: a plain value stays" in plain.stderr
    assert row(baked, name)["state"] == "stopped", "a refused start started something"

    second = secrets.token_hex(24)
    secret_file = tmp_path / "token"
    secret_file.write_text(second + "\n")
    started = baked.json("start", name, "--set", f"api_token=@{secret_file}", "--wait")
    assert started["health"]["ok"], started
    assert inside(baked, name, "cat", "/root/own-change") == "kept\n"
    assert token_digest(baked, name) == hashlib.sha256(second.encode()).hexdigest()
    assert "Start" in inside(baked, name, "curl", "-fsS", "http://127.0.0.1/"), "plain config kept"
    assert row(baked, name)["state"] == "running"
    again = baked.run("start", name, "--set", f"api_token=@{secret_file}", check=False)
    assert again.returncode == 2 and "is running" in again.stderr


def test_rm_force_kills_a_machine_that_will_not_stop(
    baked: Kiln, machines: list[str], tmp_path: Path
) -> None:
    name = unique("web")
    machines.append(name)
    secret_file = tmp_path / "token"
    secret_file.write_text("t0ken")
    baked.run(
        "run", "web", "--name", name, "--set", "site_title=Stuck",
        "--set", f"api_token=@{secret_file}", "--wait",
    )  # fmt: skip
    # a service that ignores SIGTERM and has no stop timeout: a poweroff never finishes
    inside(
        baked, name, "systemd-run", "--unit", "stuck", "-p", "TimeoutStopSec=infinity",
        "-p", "KillMode=process", "sh", "-c", "trap '' TERM; while :; do sleep 1; done",
    )  # fmt: skip
    data = row(baked, name)
    nspawn, leader = data["nspawn_pid"], data["leader_pid"]
    assert isinstance(nspawn, int) and isinstance(leader, int)
    # the machine runs in a cgroup of its own, shared with no other machine or bake
    group = machine_cgroup(Home(baked.home).id, name)
    own = cgroups.folders(group)
    assert own, "this host has a cgroup hierarchy systemd uses"
    assert f"/kiln/{group}/payload" in Path(f"/proc/{leader}/cgroup").read_text()
    folder = baked.home / "machines" / name
    (folder / "machine.json").write_text("{damaged")  # and kiln lost track of it

    plain = baked.run("rm", name, check=False)
    assert plain.returncode == 1 and "rm --force" in plain.stderr, plain.stderr
    assert (folder / "root").is_mount(), "kiln rm unmounted a running machine's root"
    assert Path(f"/proc/{nspawn}").exists()

    began = time.monotonic()
    baked.run("rm", "--force", "--volumes", name)
    assert time.monotonic() - began < 15
    for pid in (nspawn, leader):
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"pid {pid} lives"
    assert not folder.exists()
    assert name not in {m["name"] for m in baked.json("ps")}
    assert not any(path.exists() for path in own), "its cgroup went with it"


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return text[text.rindex(")") + 2]


def test_a_machine_from_an_imported_root_is_named_after_itself(
    baked: Kiln, machines: list[str], tmp_path: Path
) -> None:
    rootfs = tmp_path / "vendor.tar"
    baked.run("export", "base:1", "--format", "rootfs-tar", "-o", str(rootfs))
    stage = tmp_path / "stage"
    (stage / "etc").mkdir(parents=True)
    (stage / "etc/hostname").write_text("vendor-build-host\n")
    subprocess.run(["tar", "-rf", str(rootfs), "-C", str(stage), "./etc/hostname"], check=True)
    recipe = tmp_path / "vendor.toml"
    recipe.write_text(f'[image]\nname = "vendor-{os.getpid()}"\nimport = "vendor.tar"\n')
    baked_ref = baked.json("bake", str(recipe))["ref"]
    [check] = [c for c in baked.json("inspect", baked_ref)["seal"] if c["path"] == "/etc/hostname"]
    assert check["removed"] == 1 and check["ok"]

    name = unique("vendor")
    machines.append(name)
    baked.run("run", baked_ref, "--name", name, "--wait")
    assert inside(baked, name, "hostname").strip() == name
    assert baked.run("exec", name, "--", "test", "-e", "/etc/hostname", check=False).returncode
