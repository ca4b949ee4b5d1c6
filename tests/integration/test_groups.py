"""kiln up keeps a group at its count with real machines: it starts the members healthy,
replaces one whose systemd-nspawn was killed (its state folder kept), removes the newest
when the count goes down, leaves members on another digest to kiln rollout, names a member
that never becomes healthy, and does nothing the second time. Secrets reach a member as
credentials; a source that cannot be read starts nothing."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import AppImages, Kiln

GROUP = "grp"  # the session's home is shared: a name no other test's machines take


PORTS = 'ports = ["28431-28433:80"]\n'  # member n forwards host port 28430+n


def policy(path: Path, image: str, count: int, deadline: str = "30s", extra: str = "") -> str:
    path.write_text(
        f'[groups.{GROUP}]\nimage = "{image}"\ncount = {count}\n{PORTS}{extra}'
        f'[groups.{GROUP}.update]\nhealthy_deadline = "{deadline}"\n'
    )
    return str(path)


def members(kiln: Kiln) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in kiln.json("ps") if row["name"].startswith(f"{GROUP}-")}


def up(kiln: Kiln, path: str, check: bool = True) -> tuple[int, dict[str, Any], str]:
    result = kiln.run("up", "--policy", path, "--json", check=check)
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    group = data["groups"][0] if data else {}
    return result.returncode, group, result.stderr


def test_kiln_up_keeps_a_group_at_its_count(
    baked: Kiln, app_images: AppImages, machines: list[str], tmp_path: Path
) -> None:
    machines += [f"{GROUP}-{n}" for n in (1, 2, 3)]
    good = app_images.digests[app_images.good]
    file = tmp_path / "kiln.toml"

    # a secret source that cannot be read: exit 2 by its key path, nothing starts
    missing = 'secrets = { token = { file = "secrets/token" } }\n'
    result = baked.run(
        "up", "--policy", policy(file, app_images.good, 3, extra=missing), check=False
    )
    assert result.returncode == 2, result.stderr
    assert f"groups.{GROUP}.secrets.token: file = 'secrets/token': no such file" in result.stderr
    assert not members(baked)

    path = policy(file, app_images.good, 3)
    code, data, _err = up(baked, path)
    assert code == 0 and data["changed"] and data["digest"] == good
    assert sorted(s["name"] for s in data["started"]) == ["grp-1", "grp-2", "grp-3"]
    assert all(s["healthy"] and s["digest"] == good for s in data["started"])

    shown = baked.json("group", "show", GROUP, "--policy", path)
    assert shown["count"] == {"wanted": 3, "members": 3, "running": 3, "healthy": 3}
    first = shown["members"][0]
    assert first["name"] == "grp-1" and first["index"] == 1
    assert first["version"] == int(app_images.good.split(":")[1])
    assert first["digest"] == good and first["state"] == "running"
    assert first["healthy"] is True and first["health"] == "exit code 0"
    assert isinstance(first["drift"], int)
    assert [m["ports"] for m in shown["members"]] == [[f"2843{n}:80/tcp"] for n in (1, 2, 3)]
    assert ipaddress.IPv4Address(first["address"]).is_private
    listed = baked.json("group", "ls", "--policy", path)
    assert [(g["group"], g["count"]["healthy"], g["digest"]) for g in listed] == [(GROUP, 3, good)]

    volume = baked.home / "state" / "grp-2" / "var-lib-app"
    assert members(baked)["grp-2"]["volumes"] == {"/var/lib/app": str(volume)}
    baked.run("exec", "grp-2", "--", "sh", "-c", "echo kept > /var/lib/app/mark")

    # SIGKILL one member's systemd-nspawn: the next kiln up replaces it, with its state
    os.kill(members(baked)["grp-2"]["nspawn_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while members(baked)["grp-2"]["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    code, data, _err = up(baked, path)
    assert code == 0
    assert [(r["name"], r["reason"]) for r in data["removed"]] == [("grp-2", "failed")]
    assert [(s["name"], s["healthy"]) for s in data["started"]] == [("grp-2", True)]
    assert (volume / "mark").read_text() == "kept\n"
    mark = baked.run("exec", "grp-2", "--", "cat", "/var/lib/app/mark").stdout
    assert mark == "kept\n"

    # one count fewer: the newest member goes (grp-2, just replaced), not the highest index
    code, data, _err = up(baked, policy(file, app_images.good, 2))
    assert [(r["name"], r["reason"]) for r in data["removed"]] == [("grp-2", "extra")]
    assert sorted(members(baked)) == ["grp-1", "grp-3"]

    # nothing to do: said, and nothing changes
    pids = {name: row["nspawn_pid"] for name, row in members(baked).items()}
    result = baked.run("up", "--policy", path)
    assert "nothing to do: 2 of 2 members running" in result.stdout
    assert {name: row["nspawn_pid"] for name, row in members(baked).items()} == pids

    # another kiln command holds the group: this one does nothing
    baked.home.joinpath("locks").mkdir(exist_ok=True)
    with open(baked.home / "locks" / f"group.{GROUP}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = baked.run("up", "--policy", policy(file, app_images.good, 3), check=False)
    assert result.returncode == 1
    assert f"group {GROUP} is being changed by another kiln command" in result.stderr
    assert sorted(members(baked)) == ["grp-1", "grp-3"]

    # a new image for the group: kiln up starts the missing member from it and leaves
    # the others to kiln rollout; one that never becomes healthy is named and left
    code, data, err = up(baked, policy(file, app_images.bad, 3, deadline="3s"), check=False)
    assert code == 1
    assert [(s["name"], s["healthy"]) for s in data["started"]] == [("grp-2", False)]
    assert data["unhealthy"] == ["grp-2"]
    assert sorted(m["name"] for m in data["elsewhere"]) == ["grp-1", "grp-3"]
    assert "not healthy in time: grp-2 (left running for a look)" in err
    assert members(baked)["grp-2"]["state"] == "running"
    text = baked.run("up", "--policy", path).stdout  # grp-2 is running: not kiln up's
    assert "kiln rollout grp moves them" in text

    # count 0 removes every member
    code, data, _err = up(baked, policy(file, app_images.good, 0))
    assert sorted(r["name"] for r in data["removed"]) == ["grp-1", "grp-2", "grp-3"]
    assert not members(baked)


def test_a_member_gets_the_groups_config_and_secrets(
    baked: Kiln, machines: list[str], tmp_path: Path
) -> None:
    machines.append("site-1")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("t0ken\n")
    path = tmp_path / "kiln.toml"
    path.write_text(
        '[groups.site]\nimage = "web"\ncount = 1\nconfig = { site_title = "Grouped" }\n'
        'secrets = { api_token = { file = "secrets/token" } }\n'
    )
    baked.run("up", "--policy", str(path))
    token = baked.run("exec", "site-1", "--", "cat", "/run/web/token.sha256").stdout.strip()
    assert token == hashlib.sha256(b"t0ken").hexdigest()
    row = next(r for r in baked.json("ps") if r["name"] == "site-1")
    assert row["config"] == {"site_title": "Grouped"} and row["secrets"] == ["api_token"]
    path.write_text(path.read_text().replace("count = 1", "count = 0"))
    baked.run("up", "--policy", str(path))
    assert "site-1" not in {r["name"] for r in baked.json("ps")}
