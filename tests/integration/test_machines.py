"""Machines for real: systemd booted under systemd-nspawn from the baked web example.

Each test removes the machines it made (volumes too), even when it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from tests.integration.conftest import Kiln


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def run_web(kiln: Kiln, name: str, ref: str, title: str, token: str) -> dict[str, object]:
    result = kiln.run(
        "run",
        ref,
        "--name",
        name,
        "--set",
        f"site_title={title}",
        "--set",
        f"api_token={token}",
        "--wait",
        "--json",
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def inside(kiln: Kiln, name: str, *command: str) -> str:
    return kiln.run("exec", name, "--", *command).stdout


def machine(kiln: Kiln, name: str) -> dict[str, object]:
    [row] = [m for m in kiln.json("ps") if m["name"] == name]
    assert isinstance(row, dict)
    return row


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain ``needle`` (mounts not crossed:
    a machine's root mount shows the same layers and upper dir that are walked anyway)."""
    found = []
    device = root.stat().st_dev
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(folder, d))]
        for name in files:
            path = Path(folder) / name
            st = path.lstat()
            if st.st_dev != device or not path.is_file() or path.is_symlink():
                continue
            if needle in path.read_bytes():
                found.append(path)
    return found


def test_web_boots_healthy_with_its_config_and_secret(baked: Kiln, machines: list[str]) -> None:
    name, token = unique("web"), secrets.token_hex(24)
    title = f"Integration site {secrets.token_hex(4)}"
    machines.append(name)
    launched = run_web(baked, name, "web", title, token)
    check = launched["health"]
    assert isinstance(check, dict) and check["ok"], launched
    assert check["check"] == "GET http://127.0.0.1/" and check["detail"] == "HTTP 200"

    assert f"<h1>{title}</h1>" in inside(baked, name, "curl", "-fsS", "http://127.0.0.1/")
    assert inside(baked, name, "cat", "/run/kiln/config.env") == f'SITE_TITLE="{title}"\n'
    seed = "/var/lib/cloud/seed/nocloud"
    assert f'local-hostname: "{name}"' in inside(baked, name, "cat", f"{seed}/meta-data")
    user_data = inside(baked, name, "cat", f"{seed}/user-data")
    assert user_data.startswith("#cloud-config\n") and title in user_data
    assert token not in user_data
    assert inside(baked, name, "hostname").strip() == name

    # a service read the credential: the digest it wrote is the token's
    digest = inside(baked, name, "cat", "/run/web/token.sha256")
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert "Finished" in baked.run("logs", name, "--unit", "web-token").stdout

    row = machine(baked, name)
    assert row["state"] == "running" and row["image"] == launched["image"]
    assert row["config"] == {"site_title": title} and row["secrets"] == ["api_token"]
    cmdline = Path(f"/proc/{row['nspawn_pid']}/cmdline").read_bytes()
    assert token.encode() not in cmdline, "the secret is on nspawn's command line"

    baked.run("stop", name)  # the journal and every file the machine wrote are on disk now
    assert machine(baked, name)["state"] == "stopped"
    assert not (baked.home / "machines" / name / "root").is_mount()
    assert files_holding(baked.home, token.encode()) == []
    assert files_holding(baked.home, title.encode()), "the walk reads the machine's files"


def test_a_volume_survives_rm_and_run_of_a_rebaked_version(
    baked: Kiln, machines: list[str], examples: Path
) -> None:
    name = unique("web")
    machines.append(name)
    first = run_web(baked, name, "web", "First", "token-1")
    inside(baked, name, "sh", "-c", "echo kept-across-versions > /var/lib/web/data")
    folder = baked.home / "machines" / name
    assert not (folder / "upper/var/lib/web/data").exists(), "state must not be in the overlay"

    removed = baked.run("rm", name)
    assert "kept volume" in removed.stderr
    assert not (folder / "machine.json").exists()
    [volume] = list((folder / "volumes").iterdir())
    assert (volume / "data").read_text() == "kept-across-versions\n"

    page = examples / "site" / "index.html"
    page.write_text(page.read_text().replace("copy step", "copy step of a newer version"))
    rebaked = baked.json("bake", str(examples / "web.toml"))
    assert not rebaked["cached"] and rebaked["ref"] != first["image"]

    second = run_web(baked, name, rebaked["ref"], "Second", "token-2")
    assert second["image"] == rebaked["ref"]
    assert inside(baked, name, "cat", "/var/lib/web/data") == "kept-across-versions\n"
    assert "newer version" in inside(baked, name, "curl", "-fsS", "http://127.0.0.1/")
    assert machine(baked, name)["image"] == rebaked["ref"]

    baked.run("rm", "--volumes", name)
    assert not folder.exists()


def test_config_that_breaks_the_contract_is_refused(baked: Kiln) -> None:
    name = unique("web")
    missing = baked.run("run", "web", "--name", name, "--set", "site_title=x", check=False)
    assert missing.returncode == 2, missing.stderr
    assert "api_token: required secret is missing" in missing.stderr
    assert "nothing was started" in missing.stderr
    unknown = baked.run(
        "run", "web", "--name", name, "--set", "site_title=x", "--set", "api_token=y",
        "--set", "colour=red", check=False,
    )  # fmt: skip
    assert unknown.returncode == 2 and "colour: unknown key" in unknown.stderr
    assert not (baked.home / "machines" / name).exists()
    assert name not in {m["name"] for m in baked.json("ps")}


def test_converge_fails_on_a_step_that_appends(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "ticks.toml"
    recipe.write_text(
        '[image]\nname = "ticks"\nparent = "base"\n\n'
        '[[steps]]\nrun = "echo tick >> /etc/ticks"\n\n'
        '[tests]\ncommands = ["test -f /etc/ticks"]\n'
    )
    ticks = baked.json("bake", str(recipe))["ref"]
    result = baked.run("test", "--converge", ticks, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "converge: a second run of the steps changed 1 file" in result.stdout
    assert "~ /etc/ticks" in result.stdout
    [run] = baked.json("inspect", ticks)["tests"][:1]
    assert not run["ok"] and run["converge"] is False
    assert [c["path"] for c in run["changes"]] == ["/etc/ticks"]
    assert [r["ok"] for r in run["results"]] == [True]


def test_web_passes_its_tests_and_converges(baked: Kiln) -> None:
    result = baked.run("test", "--converge", "web", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["ok"] and report["converge"] is True and report["changes"] == []
    assert len(report["results"]) == 4 and all(r["ok"] for r in report["results"])
    assert report["health"]["ok"]
    [run] = baked.json("inspect", "web")["tests"][:1]
    assert run["ok"] and run["converge"] is True and run["machine"] == report["machine"]
    assert report["machine"] not in {m["name"] for m in baked.json("ps")}, "a throw-away stayed"
    assert not (baked.home / "machines" / report["machine"]).exists()
