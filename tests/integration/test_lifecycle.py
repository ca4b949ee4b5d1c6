"""Channels, gates, rollback, revocation, where and history on real bakes and machines,
through the command line as a user runs it.

Each test works on a private copy of the session's baked home (blobs and unpacked layers
hard-linked, never written in place; the catalog copied), so promotions and revocations
here never reach the other tests' images."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.postgres import Postgres
from tests.integration.conftest import EXAMPLES, Kiln

WEB_CONFIG = ("--set", "site_title=Lifecycle", "--set", "api_token=secret")


@pytest.fixture
def own(baked: Kiln, tmp_path: Path) -> Iterator[Kiln]:
    """A KILN_HOME of the test's own holding the images ``baked`` holds, with no channel
    yet (other modules promote in the shared store); its machines are removed afterwards,
    even when the test failed with them running."""
    home = tmp_path / "home"
    home.mkdir()
    for folder in ("oci", "layers", "cache"):
        if (baked.home / folder).is_dir():
            subprocess.run(["cp", "-al", str(baked.home / folder), str(home)], check=True)
    source = sqlite3.connect(baked.home / "catalog.db")
    target = sqlite3.connect(home / "catalog.db")
    source.backup(target)
    with target:
        target.execute("DELETE FROM channel_assignments")
    source.close()
    target.close()
    kiln = Kiln(home)
    yield kiln
    machines = home / "machines"
    for machine in sorted(machines.iterdir()) if machines.is_dir() else []:
        kiln.run("rm", "--force", "--volumes", machine.name, check=False)


def refused(kiln: Kiln, *args: str) -> subprocess.CompletedProcess[str]:
    result = kiln.run(*args, check=False)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    return result


def promote(kiln: Kiln, *args: str) -> tuple[int, dict[str, Any]]:
    result = kiln.run("promote", *args, "--json", check=False)
    return result.returncode, json.loads(result.stdout)


POLICY = """
[trust]
keys = ["release.pub"]

[channels.staging]
tests = true

[channels.prod]
tests = true
converge = true
signed = true
after = "staging"
soak = "8s"  # more than the commands between promotions take on a busy host
"""


def test_promotion_is_refused_for_each_missing_gate_and_accepted_when_all_hold(
    own: Kiln, tmp_path: Path
) -> None:
    policy = tmp_path / "kiln.toml"
    policy.write_text(POLICY)
    own.run("key", "generate", "--no-password", "--output", str(tmp_path / "release"))
    gate = ("--policy", str(policy))

    code, data = promote(own, "base:1", "prod", *gate)
    assert code == 1 and not data["promoted"]
    assert data["unmet"] == ["tests", "converge", "signed", "soak"]
    assert data["policy"]["path"] == str(policy)
    text = refused(own, "promote", "base:1", "prod", *gate)
    assert "4 unmet gates: tests, converge, signed, soak" in text.stderr
    assert f"policy: {policy}" in text.stdout

    own.run("test", "base:1", "--converge")  # a recorded, converged test of this digest
    assert promote(own, "base:1", "staging", *gate)[0] == 0
    in_staging = time.monotonic()
    code, data = promote(own, "base:1", "prod", *gate)
    assert code == 1 and data["unmet"] == ["signed", "soak"]

    own.run("sign", "base:1", "--key", str(tmp_path / "release.key"))
    code, data = promote(own, "base:1", "prod", *gate)
    assert code == 1 and data["unmet"] == ["soak"]
    assert "of its 8s soak" in data["gates"][-1]["why"]

    time.sleep(max(0.0, 8.2 - (time.monotonic() - in_staging)))
    code, data = promote(own, "base:1", "prod", *gate)
    assert code == 0 and data["promoted"] and not data["forced"] and data["unmet"] == []
    [prod] = [c for c in own.json("channels", "base") if c["channel"] == "prod"]
    head = prod["head"]
    assert prod["image"] == "base:1" and head["forced"] is False and head["previous"] is None
    assert {g["gate"]: g["ok"] for g in head["gates"]} == {
        "revoked": True,
        "tests": True,
        "converge": True,
        "signed": True,
        "soak": True,
    }
    kinds = [e["kind"] for e in own.json("history", "base")]
    assert {"baked", "tested", "signed", "promoted"} <= set(kinds)
    assert kinds.index("tested") < kinds.index("promoted")

    # --force promotes what misses gates (tiny cannot boot, so it is never tested)
    code, data = promote(own, "tiny:1", "staging", *gate)
    assert code == 1 and data["unmet"] == ["tests"]
    code, data = promote(own, "tiny:1", "staging", "--force", *gate)
    assert code == 0 and data["forced"]
    [staging] = own.json("channels", "tiny")
    assert staging["head"]["forced"] is True
    assert [g["gate"] for g in staging["head"]["gates"] if not g["ok"]] == ["tests"]


CHILD = """
[image]
name = "tinychild"
parent = "tiny:dev"

[[steps]]
copy = "note.txt"
to = "/etc/note.txt"
"""


def test_rollback_restores_the_previous_assignment_and_a_channel_is_a_parent(
    own: Kiln, examples: Path, tmp_path: Path
) -> None:
    with (examples / "tiny" / "hello").open("a") as hello:
        hello.write('echo "a second tiny"\n')
    assert own.json("bake", str(examples / "tiny.toml"))["ref"] == "tiny:2"
    own.run("promote", "tiny:1", "dev")
    own.run("promote", "tiny:2", "dev")
    assert own.json("inspect", "tiny:dev")["ref"] == "tiny:2"

    child = tmp_path / "child"
    child.mkdir()
    (child / "note.txt").write_text("note\n")
    (child / "child.toml").write_text(CHILD)
    assert own.json("bake", str(child / "child.toml"))["ref"] == "tinychild:1"
    inspected = own.json("inspect", "tinychild")
    assert inspected["parent_named"] == "tiny:dev"
    assert [p["ref"] for p in inspected["parents"]] == ["tiny:2"]
    assert own.json("lineage", "tinychild")["parent_named"] == "tiny:dev"
    [baked] = [e for e in own.json("history", "tinychild") if e["kind"] == "baked"]
    assert baked["detail"]["parent"] == "tiny:2" and baked["detail"]["parent_named"] == "tiny:dev"

    back = own.json("rollback", "tiny", "dev")
    assert (back["image"], back["previous"]) == ("tiny:1", "tiny:2")
    assert own.json("inspect", "tiny:dev")["ref"] == "tiny:1"
    # the channel names tiny:1 now: the child is baked again on it
    rebaked = own.json("bake", str(child / "child.toml"))
    assert rebaked["ref"] == "tinychild:2"
    assert [p["ref"] for p in own.json("inspect", "tinychild:2")["parents"]] == ["tiny:1"]
    gone = refused(own, "rollback", "tiny", "dev")
    assert "no earlier version" in gone.stderr
    [dev] = own.json("channels", "tiny")
    assert [h["action"] for h in dev["history"]] == ["rollback", "promote", "promote"]
    assert own.json("inspect", "tiny:latest")["ref"] == "tiny:2"


CHILD_OF_BASE = """
[image]
name = "role"
parent = "base"
"""


def test_revoking_base_blocks_baking_and_running_web_and_empties_channels(
    own: Kiln, tmp_path: Path
) -> None:
    own.run("promote", "web:1", "prod")
    own.run("promote", "base:1", "staging")
    own.run("run", "web:prod", "--name", "lc-web", *WEB_CONFIG, "--wait")

    where = own.json("where", "web:prod")
    [version] = where["versions"]
    assert version["ref"] == "web:1" and version["channels"] == ["prod"]
    [machine] = version["machines"]
    assert (machine["name"], machine["state"], machine["drift"]) == ("lc-web", "running", 0)
    matrix = own.json("where")
    [web] = [row for row in matrix["images"] if row["name"] == "web"]
    assert web["channels"]["prod"]["machines"] == ["lc-web"]
    assert [m["name"] for m in matrix["machines"]] == ["lc-web"]
    kinds = [(e["kind"], e["ref"]) for e in own.json("history", "web")]
    assert kinds[-2:] == [("promoted", "web:1"), ("machine_started", "web:1")]

    done = own.json("revoke", "base:1", "--reason", "CVE-2026-0001 in the base")
    assert "web:1" in done["descendants"]
    assert sorted((c["name"], c["channel"]) for c in done["channels_left"]) == [
        ("base", "staging"),
        ("web", "prod"),
    ]
    heads = {c["channel"]: c for c in own.json("channels", "web")}
    assert heads["prod"]["image"] is None and heads["prod"]["head"]["action"] == "revoke"

    for ref in ("web", "web:1", "web:prod"):
        launch = refused(own, "run", ref, "--name", "lc-web-2", *WEB_CONFIG)
        assert "base:1" in launch.stderr and "CVE-2026-0001" in launch.stderr
    bake = refused(own, "bake", str(EXAMPLES / "web.toml"))
    assert "base:1 is revoked" in bake.stderr
    (tmp_path / "role.toml").write_text(CHILD_OF_BASE)
    bake = refused(own, "bake", str(tmp_path / "role.toml"))
    assert "its parent base" in bake.stderr and "base:1" in bake.stderr
    assert refused(own, "promote", "web:1", "prod", "--force").returncode == 1

    still = refused(own, "where", "--revoked", "--json")
    [running] = json.loads(still.stdout)["machines"]
    assert running["name"] == "lc-web" and running["revoked"]["by"] == "base:1"
    own.run("stop", "lc-web")
    start = refused(own, "start", "lc-web", "--set", "api_token=secret")
    assert "revoked through base:1" in start.stderr
    listed = own.json("where", "--revoked")
    assert listed["machines"] == []  # stopped now
    assert [r["image"] for r in listed["revoked"]] == ["base:1"]
    looked = own.json("inspect", "web:1")  # looking at a revoked image is fine
    assert looked["revoked"]["by"] == "base:1"

    history = own.json("history", "web")
    assert [e["kind"] for e in history][-2:] == ["revoked", "machine_stopped"]
    assert history[-2]["detail"]["through"] == "base:1"

    restored = own.json("restore", "base:1")
    assert {(c["name"], c["channel"]) for c in restored["channels_left"]} == {
        ("base", "staging"),
        ("web", "prod"),
    }
    assert own.json("where", "web:1")["versions"][0]["revoked"] is None
    assert own.json("rollback", "web", "prod")["image"] == "web:1"
    assert [e["kind"] for e in own.json("history", "web")][-2:] == ["restored", "rolled_back"]


PROBE = """
import json, sys
from kiln.app import resolve
from kiln.app.workspace import opened
with opened() as workspace:
    row, image = resolve.image_and_bytes(workspace, sys.argv[1])
heavy = ("sqlalchemy", "pydantic", "kiln.recipe.models")
print(json.dumps([row.ref, sorted(m for m in heavy if m in sys.modules)]))
"""


def test_kiln_runs_resolver_checks_channels_and_revocation_in_plain_sql(own: Kiln) -> None:
    own.run("promote", "web:1", "prod")
    own.run("revoke", "tiny:1", "--reason", "unrelated", "--at", "2999-01-01T00:00")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "web:prod"],
        env={**own.env(), "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == ["web:1", []]


def test_the_same_lifecycle_on_a_postgresql_catalog(
    postgres: Postgres, examples: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KILN_CATALOG_URL", postgres.database())
    kiln = Kiln(tmp_path / "home")
    kiln.run("bake", str(examples / "tiny.toml"))
    with (examples / "tiny" / "hello").open("a") as hello:
        hello.write('echo "a second tiny"\n')
    kiln.run("bake", str(examples / "tiny.toml"))
    kiln.run("promote", "tiny:1", "prod")
    kiln.run("promote", "tiny:2", "prod")
    assert kiln.json("rollback", "tiny", "prod")["image"] == "tiny:1"
    kiln.run("promote", "tiny:2", "prod")
    soon = datetime.now(UTC) + timedelta(seconds=6)  # room for two commands on a busy host
    assert kiln.json("revoke", "tiny:2", "--reason", "soon", "--at", soon.isoformat())["scheduled"]
    assert kiln.json("inspect", "tiny:prod")["ref"] == "tiny:2"  # not yet
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    assert refused(kiln, "inspect", "tiny:prod").stderr.count("tiny:2 is revoked") == 1
    assert kiln.json("inspect", "tiny")["ref"] == "tiny:1"  # latest: the newest not revoked
    [prod] = kiln.json("channels", "tiny")
    assert prod["image"] is None and prod["head"]["action"] == "revoke"
    row = kiln.json("where")["images"][0]
    assert row["latest"]["ref"] == "tiny:1" and row["channels"]["prod"] is None
    kinds = [e["kind"] for e in kiln.json("history", "tiny")]
    assert kinds == ["baked", "baked", "promoted", "promoted", "rolled_back", "promoted", "revoked"]
    kiln.run("restore", "tiny:2")
    assert kiln.json("rollback", "tiny", "prod")["image"] == "tiny:2"
    assert not (kiln.home / "catalog.db").exists()
