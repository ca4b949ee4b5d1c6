"""kiln drift for real: a web machine changed from inside, and a layer edited on the host.

The deep check's test edits an unpacked layer, so it works on a copy of the shared store
in a home of its own (tiny cannot boot: it has no systemd); the shared store is never
changed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.conftest import Kiln

CONFIG = ("--set", "site_title=drift", "--set", "api_token=not-a-secret")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def drift(kiln: Kiln, *args: str) -> tuple[int, Any]:
    done = kiln.run("drift", *args, "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def changes(data: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    return {c["path"]: (c["change"], c["layer"]) for c in data["changes"] + data["metadata"]}


def test_drift_finds_what_the_machine_changed_outside_state_and_logs(
    baked: Kiln, machines: list[str]
) -> None:
    name = unique("drift")
    machines.append(name)
    baked.run("run", "web", "--name", name, *CONFIG, "--wait")
    code, data = drift(baked, name)
    assert (code, data["total"], data["state"]) == (0, 0, "running"), data  # boot is no drift
    baked.run(
        "exec",
        name,
        "--",
        "sh",
        "-c",
        "echo '# tuned' >> /etc/nginx/nginx.conf"
        " && echo hello > /usr/local/bin/added"
        " && rm /etc/issue.net"
        " && echo kept > /var/lib/web/state-file"
        " && echo line >> /var/log/drift-test.log",
    )
    code, data = drift(baked, name)
    assert code == 1
    assert changes(data) == {
        "/etc/nginx/nginx.conf": ("changed", None),
        "/usr/local/bin/added": ("added", None),
        "/etc/issue.net": ("deleted", None),
    }
    assert data["ignored"] == ["/var/lib/web"]
    text = baked.run("drift", name, check=False).stdout
    assert f"{name} (web:" in text and "3 paths drifted" in text
    baked.run("stop", name)
    code, every = drift(baked, "--all")
    [stopped] = [d for d in every if d["name"] == name]
    assert code == 1 and stopped["state"] == "stopped" and changes(stopped) == changes(data)


def copy_store(source: Kiln, target: Kiln) -> None:
    """The shared store's images (bytes, unpacked layers, catalog) in a home of its own."""
    target.home.mkdir(parents=True)
    for part in ("oci", "layers", "catalog.db"):
        subprocess.run(["cp", "-a", str(source.home / part), str(target.home / part)], check=True)


def test_deep_finds_a_layer_edited_behind_the_overlay(baked: Kiln, fresh: Kiln) -> None:
    copy_store(baked, fresh)
    name = unique("deep")
    fresh.run("run", "web", "--name", name, *CONFIG, "--wait")
    try:
        state = json.loads((fresh.home / "machines" / name / "machine.json").read_text())
        base = Path(state["layers"][0])
        assert base.is_relative_to(fresh.home)  # never the shared store's
        issue = base / "etc" / "issue"
        edited = issue.with_name("issue.edited")
        edited.write_text("edited on the host\n")
        shutil.copystat(issue, edited)
        os.replace(edited, issue)  # a new file: nothing shared with the original
        assert fresh.run("exec", name, "--", "cat", "/etc/issue").stdout == "edited on the host\n"
        code, fast = drift(fresh, name)
        assert (code, fast["total"], fast["deep"]) == (0, 0, None)
        code, deep = drift(fresh, name, "--deep")
        assert code == 1
        assert changes(deep) == {"/etc/issue": ("changed", 0)}
        assert [layer["inventory"] for layer in deep["deep"]] == [True, True]
        assert not deep["notes"]
    finally:
        fresh.run("rm", "--force", "--volumes", name, check=False)
