"""Two hosts, simulated: two KILN_HOMEs (two stores, two workers) on one PostgreSQL catalog
and one registry on loopback.

Host A takes the Debian base (pulled from the session's store: a bootstrap costs 40 s);
host B bakes an app on it, pulling the base's bytes from the team's registry, promotes it
and pushes it; host A runs app:prod, pulling the app. Then the app changes on host A and a
propagation of its children is spread over both workers, each child a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.postgres import Postgres
from bench.scaleworkers import CHILD  # the children bench/scale.py propagates
from tests.integration.conftest import Host, Kiln, Workers, until

APP = """\
[image]
name = "app"
parent = "base:1"

[[steps]]
run = "mkdir -p /etc/app && echo {mark} > /etc/app/mark"

[tests]
commands = ["test -s /etc/app/mark"]
"""
CHILDREN = ("c1", "c2", "c3", "c4")


def test_two_hosts_share_a_catalog_a_registry_and_the_work(
    baked: Kiln, postgres: Postgres, registry: str, tmp_path: Path, workers: Workers
) -> None:
    url = postgres.database()
    policy = tmp_path / "kiln.toml"
    policy.write_text(
        f'[registry]\nurl = "docker://{registry}/team"\ninsecure = true\n\n'
        "[channels]\nopen = true\n"
    )
    a, b = Host(tmp_path / "host-a", url), Host(tmp_path / "host-b", url)
    for host in (a, b):
        host.home.mkdir()
        (host.home / "kiln.toml").write_text(policy.read_text())
    a.run("catalog", "upgrade")
    baked.run("push", "base:1", f"docker://{registry}/team/base", "--insecure")
    a.run("pull", "base:1")  # NAME:TAG of the team's registry

    recipes = tmp_path / "recipes"  # a folder both hosts see, as a shared file system
    recipes.mkdir()
    (recipes / "app.toml").write_text(APP.format(mark="one"))
    made = b.run("bake", str(recipes / "app.toml"), "--json")
    assert "pulling" in made.stderr, "base's bytes come from the registry"
    b.run("promote", "app:1", "prod")
    b.run("push", "app:1")
    stores = {s["home"] for s in b.json("images") if s["ref"] == "base:1" for s in s["stores"]}
    assert {str(a.home), str(b.home)} <= stores

    machine = a.run("run", "app:prod", "--name", "two-hosts", "--wait", "--network", "host")
    try:
        assert "pulling" in machine.stderr, "app's bytes come from the registry"
        assert [m["name"] for m in a.json("ps")] == ["two-hosts"]
    finally:
        a.run("rm", "--force", "two-hosts")

    # a propagation of app's children, spread over both hosts' workers
    for name in CHILDREN:
        (recipes / f"{name}.toml").write_text(CHILD.format(name=name))
        a.run("bake", str(recipes / f"{name}.toml"))
    (recipes / "app.toml").write_text(APP.format(mark="two"))
    a.json("bake", str(recipes / "app.toml"))
    a.run("push", "app:2")
    for host in (a, b):
        workers.start(host)
    deferred = a.json("propagate", "app", "--queue")

    def finished() -> list[dict[str, Any]] | None:
        jobs = a.json("jobs")
        items = [j for j in jobs if j["task"] == "kiln.propagate_item"]
        done = [j for j in items if j["state"] in ("done", "failed")]
        first = next(j for j in jobs if j["id"] == deferred["job"])
        if first["state"] == "done" and len(items) == len(CHILDREN) == len(done):
            return items
        return None

    items = until("the spread propagation", finished, 240, workers)
    assert {j["state"] for j in items} == {"done"}, workers.logs()
    assert {j["home"] for j in items} == {str(a.home), str(b.home)}, "both hosts took items"
    app2 = a.json("inspect", "app:2")["digest"]
    for name in CHILDREN:
        lineage = a.json("lineage", f"{name}:2")
        assert app2 in [ancestor["digest"] for ancestor in lineage["ancestors"]]
