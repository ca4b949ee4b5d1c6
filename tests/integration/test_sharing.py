"""Two hosts (two KILN_HOMEs) on one PostgreSQL catalog and one registry on loopback: an
image whose bytes are in the other store is pulled from the team's registry when a bake or
an export needs it, and without a registry kiln says where the bytes are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.postgres import Postgres
from tests.integration.conftest import EXAMPLES, Kiln

CHILD = """\
[image]
name = "tinychild"
parent = "tiny.toml"

[[steps]]
run = "echo child > /etc/child"
shell = ["/bin/busybox", "sh", "-c"]
"""


def test_bytes_elsewhere_are_pulled_from_the_team_registry(
    postgres: Postgres, registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CATALOG_URL", postgres.database())
    policy = tmp_path / "kiln.toml"
    policy.write_text(f'[registry]\nurl = "docker://{registry}/team"\ninsecure = true\n')
    recipes = tmp_path / "recipes"
    shutil.copytree(EXAMPLES / "tiny", recipes / "tiny")
    shutil.copy(EXAMPLES / "tiny.toml", recipes / "tiny.toml")
    (recipes / "tinychild.toml").write_text(CHILD)
    a, b, c = (Kiln(tmp_path / name) for name in ("a", "b", "c"))

    monkeypatch.setenv("KILN_POLICY", str(policy))
    tiny = a.json("bake", str(recipes / "tiny.toml"))
    a.run("push", "tiny:1")  # to the policy's registry: team/tiny:1
    # host B bakes on tiny: the catalog has it (a cache hit), its bytes come from the registry
    made = b.run("bake", str(recipes / "tinychild.toml"), "--json")
    assert "pulling" in made.stderr, made.stderr
    child = json.loads(made.stdout)
    assert child["name"] == "tinychild" and not child["cached"]
    assert b.json("lineage", "tinychild:1")["ancestors"][0]["ref"] == "tiny:1"
    assert b.json("inspect", "tiny:1")["digest"] == tiny["digest"]
    held = {i["ref"]: i["stores"] for i in b.json("images")}
    assert any(s["here"] for s in held["tiny:1"]) and len(held["tiny:1"]) >= 2
    b.run("push", "tinychild:1")

    # host A exports the child: pulled first, with a line saying so
    out = a.run("export", "tinychild:1", "--format", "rootfs-tar", "-o", str(tmp_path / "c.tar"))
    assert "pulling" in out.stderr and (tmp_path / "c.tar").stat().st_size > 0
    assert a.json("inspect", "tinychild:1")["digest"] == child["digest"]

    # without a registry, kiln says where the bytes are
    monkeypatch.delenv("KILN_POLICY")
    c.home.mkdir()
    refused = c.run(
        "export", "tinychild:1", "--format", "rootfs-tar", "-o", str(tmp_path / "x.tar"),
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "not in this store" in refused.stderr and str(b.home) in refused.stderr
