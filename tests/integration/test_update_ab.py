"""A/B updates of one machine for real: `kiln update` on the fleet test images.

One machine lives through the whole story, so each boot is paid once: a bad image falls
back by itself, a good one is marked good with the old slot kept stopped, a rollback
swaps them, the next update drops the older fallback, a kiln killed while a slot is
tentative leaves a machine `--rollback` brings back, and kiln rm takes every slot.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import AppImages, Kiln

WINDOW = ("--good-after", "1s")


def ps_row(kiln: Kiln, name: str) -> dict[str, Any]:
    [row] = [m for m in kiln.json("ps") if m["name"] == name]
    assert isinstance(row, dict)
    return row


def inside(kiln: Kiln, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return kiln.run("exec", name, "--", *command, check=False)


def update(kiln: Kiln, name: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = kiln.run("update", name, *args, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, data


def healthy(kiln: Kiln, name: str) -> bool:
    return inside(kiln, name, "test", "-f", "/etc/app/ok").returncode == 0


def test_update_falls_back_keeps_rolls_back_and_recovers(
    baked: Kiln, app_images: AppImages, machines: list[str]
) -> None:
    name = f"ab-{secrets.token_hex(3)}"
    machines.append(name)
    folder = baked.home / "machines" / name
    baked.run("run", app_images.good, "--name", name, "--wait")
    assert inside(baked, name, "sh", "-c", "echo kept > /var/lib/app/data").returncode == 0
    assert inside(baked, name, "touch", "/root/slot-a").returncode == 0

    # a bad image never passes its check: back on A by itself, exit 1, the data kept
    code, data = update(baked, name, "--to", app_images.bad, *WINDOW, "--deadline", "2s")
    assert code == 1 and not data["ok"], data
    assert data["active"]["image"] == app_images.good and (data["back"] or {}).get("ok"), data
    assert "not healthy within 2s" in data["reason"]
    row = ps_row(baked, name)
    assert (row["image"], row["state"], row["slot"], row["fallback"]) == (
        app_images.good,
        "running",
        "a",
        None,
    )
    assert healthy(baked, name)
    assert inside(baked, name, "cat", "/var/lib/app/data").stdout == "kept\n"
    assert inside(baked, name, "test", "-f", "/root/slot-a").returncode == 0
    assert not (folder / "next").exists() and not (folder / "switch.json").exists()

    # a good one is marked good; A waits stopped as the fallback; the catalog says so
    code, data = update(baked, name, "--to", app_images.good2, *WINDOW)
    assert code == 0 and data["ok"], data
    assert data["proof"]["held_seconds"] >= 1.0
    row = ps_row(baked, name)
    assert (row["image"], row["digest"], row["slot"], row["tentative"]) == (
        app_images.good2,
        app_images.digests[app_images.good2],
        "b",
        False,
    )
    assert row["fallback"] == {
        "slot": "a",
        "image": app_images.good,
        "digest": app_images.digests[app_images.good],
    }
    assert inside(baked, name, "cat", "/etc/app/version").stdout == "two\n"
    assert inside(baked, name, "cat", "/var/lib/app/data").stdout == "kept\n"
    assert inside(baked, name, "test", "-f", "/root/slot-a").returncode != 0  # its own upper
    assert (folder / "fallback/upper/root/slot-a").is_file()
    where = baked.json("where", "app")
    running_good2 = [
        v
        for v in where["versions"]
        if v["ref"] == app_images.good2 and name in [m["name"] for m in v["machines"]]
    ]
    assert running_good2, where
    assert inside(baked, name, "touch", "/root/slot-b").returncode == 0

    # a rollback swaps them: A active with its own files, B the fallback
    code, data = update(baked, name, "--rollback")
    assert code == 0 and data["ok"], data
    row = ps_row(baked, name)
    assert (row["image"], row["slot"], row["fallback"]["image"]) == (
        app_images.good,
        "a",
        app_images.good2,
    )
    assert healthy(baked, name)
    assert inside(baked, name, "test", "-f", "/root/slot-a").returncode == 0
    assert inside(baked, name, "cat", "/var/lib/app/data").stdout == "kept\n"

    # the next update drops the older fallback (B with its file): two slots at most
    code, data = update(baked, name, "--to", app_images.good2, *WINDOW)
    assert code == 0 and data["ok"], data
    assert ps_row(baked, name)["fallback"]["image"] == app_images.good
    assert inside(baked, name, "test", "-f", "/root/slot-b").returncode != 0
    assert (folder / "fallback/upper/root/slot-a").is_file()
    assert sorted(p.name for p in (folder / "fallback").iterdir()) == ["config", "upper"]

    # kiln killed while the new slot is tentative: --rollback undoes the update
    killed = subprocess.Popen(
        baked.argv("update", name, "--to", app_images.good, "--good-after", "60s"),
        env=baked.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = folder / "switch.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if journal.is_file() and json.loads(journal.read_text())["step"] == "prove":
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert ps_row(baked, name)["tentative"] is True
    refused = baked.run("update", name, "--to", app_images.good, check=False)
    assert refused.returncode == 1 and "--rollback" in refused.stderr
    code, data = update(baked, name, "--rollback")
    assert code == 0 and data["ok"] and data["resumed"], data
    row = ps_row(baked, name)
    assert (row["image"], row["state"], row["tentative"]) == (app_images.good2, "running", False)
    assert healthy(baked, name)
    assert not journal.exists()

    # kiln rm takes every slot; the volumes stay by its usual rule
    baked.run("rm", name)
    assert sorted(p.name for p in folder.iterdir()) == ["volumes"]
    assert (folder / "volumes").is_dir()
    assert not any(Path(folder).glob("fallback*"))
