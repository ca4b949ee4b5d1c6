"""kiln refresh against a loopback repository with real bookworm and bookworm-security
suites that the image names in its own apt sources: a security update is baked into a new
version from the bumped lock, tested and promoted; a second refresh does nothing; a new
version whose tests fail is not promoted; a lock moved back to an earlier version's makes
that version's bytes the newest again, and a refresh from there moves on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.aptrepo import AptRepo, served, write_recipes
from tests.integration.conftest import Kiln

TESTS = (
    "\n[tests]\ncommands = [\n"
    '    "test -f /usr/share/kiln-patch/VERSION",\n'
    '    "! grep -q broken /usr/share/kiln-patch/VERSION",\n'
    "]\n"
)


CHILD = """[image]
name = "refresh-child"
parent = "refresh-app"

[[steps]]
run = "cp /usr/share/kiln-patch/VERSION /etc/kiln-patch-seen"

[tests]
commands = ["cmp /usr/share/kiln-patch/VERSION /etc/kiln-patch-seen"]
"""


@dataclass
class Setup:
    kiln: Kiln
    repo: AptRepo
    recipe: Path
    policy: Path
    first_lock: str  # the lock refresh-app:1 was baked from


@pytest.fixture(scope="module")
def refreshable(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """refresh-base (its apt sources: the loopback repository only) and a locked
    refresh-app on it with kiln-patch and kiln-extra from bookworm, and tests."""
    scratch = tmp_path_factory.mktemp("refresh")
    with served(scratch / "repo") as repo:
        repo.add("bookworm", "kiln-patch", "1.0")
        repo.add("bookworm", "kiln-extra", "1.0")
        base, app = write_recipes(
            scratch / "recipes", repo, ["kiln-patch", "kiln-extra"], "refresh-base", "refresh-app"
        )
        baked.json("bake", str(base))
        # the app on the base by name, so its lock is its own alone
        app.write_text(app.read_text().replace('"refresh-base.toml"', '"refresh-base"') + TESTS)
        [locked] = baked.json("lock", str(app))
        assert locked["state"] == "created"
        child = app.with_name("refresh-child.toml")
        child.write_text(CHILD)
        baked.json("bake", str(child))
        policy = scratch / "kiln.toml"
        policy.write_text('[channels.staging]\ntests = true\nmax_security_age = "7d"\n')
        yield Setup(baked, repo, app, policy, app.with_name("refresh-app.toml.lock").read_text())


def refresh(setup: Setup, *args: str) -> tuple[int, dict[str, Any]]:
    result = setup.kiln.run(
        "refresh", "refresh-app", "--policy", str(setup.policy), *args, "--json", check=False
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def versions(kiln: Kiln, ref: str) -> dict[str, str]:
    return {p["name"]: p["version"] for p in kiln.json("inspect", ref)["packages"]}


def staging(kiln: Kiln, name: str = "refresh-app") -> str | None:
    heads = {(c["name"], c["channel"]): c["image"] for c in kiln.json("channels")}
    return heads.get((name, "staging"))


def test_refresh_bakes_tests_and_promotes_a_security_update_once(refreshable: Setup) -> None:
    kiln, repo = refreshable.kiln, refreshable.repo
    first = kiln.json("inspect", "refresh-app")
    before = first["ref"]
    code, data = refresh(refreshable, "--security-only", "--promote", "staging")
    assert code == 0 and data["images"] == [], "nothing outdated, nothing done"

    repo.add("bookworm-security", "kiln-patch", "1.0+deb12u1")
    repo.add("bookworm", "kiln-extra", "1.1")  # not a security update: --security-only keeps 1.0
    code, data = refresh(refreshable, "--security-only", "--promote", "staging", "--fetch")
    assert code == 0, data
    [image] = data["images"]
    assert image["previous"] == before and image["state"] == "refreshed"
    assert [(u["package"], u["available"], u["security"]) for u in image["updates"]] == [
        ("kiln-patch", "1.0+deb12u1", True)
    ]
    assert image["lock"]["changes"]["changed"] == [
        {"name": "kiln-patch", "architecture": "all", "old": "1.0", "new": "1.0+deb12u1"}
    ]
    new, new_digest = image["ref"], image["digest"]
    assert new != before and image["steps"]["test"]["ok"] is True
    held = versions(kiln, new)
    assert (held["kiln-patch"], held["kiln-extra"]) == ("1.0+deb12u1", "1.0")
    lock = refreshable.recipe.with_name("refresh-app.toml.lock").read_text()
    assert "package kiln-patch all 1.0+deb12u1 " in lock and "package kiln-extra all 1.0 " in lock
    assert staging(kiln) == new
    [event] = [e for e in kiln.json("history", "refresh-app") if e["kind"] == "refreshed"]
    assert event["ref"] == new and event["detail"]["previous"] == before

    # what is built on it follows, by propagation: rebaked on the new version, tested, promoted
    [item] = image["propagation"]["items"]
    assert (item["name"], item["state"]) == ("refresh-child", "promoted")
    assert kiln.json("inspect", item["ref"])["parents"][0]["ref"] == new
    assert versions(kiln, item["ref"])["kiln-patch"] == "1.0+deb12u1"
    assert staging(kiln, "refresh-child") == item["ref"]

    code, again = refresh(refreshable, "--security-only", "--promote", "staging")
    assert code == 0 and again["images"] == [], "a second refresh does nothing"
    assert kiln.json("inspect", "refresh-app")["ref"] == new
    outdated = kiln.run("outdated", "refresh-app", "--json", check=False)
    assert outdated.returncode == 1, "kiln-extra 1.1 is still pending, as asked"
    [pending] = json.loads(outdated.stdout)["images"][0]["updates"]
    assert (pending["package"], pending["security"]) == ("kiln-extra", False)

    # a security update that breaks the image's tests: baked, tested, not promoted
    repo.add("bookworm-security", "kiln-patch", "1.0+deb12u2+broken")
    code, failed = refresh(refreshable, "--security-only", "--promote", "staging", "--fetch")
    assert code == 1
    [image] = failed["images"]
    assert image["state"] == "failed" and "kiln test" in image["error"]
    assert image["ref"] not in (None, new) and image["steps"]["test"]["ok"] is False
    assert "promote" not in image["steps"]
    assert staging(kiln) == new, "a failing test stops the promotion"
    told = [e for e in kiln.json("history", "refresh-app") if e["kind"] == "refreshed"]
    assert [e["detail"]["state"] for e in told] == ["refreshed", "failed"]
    assert told[-1]["ref"] == image["ref"] and "kiln test" in told[-1]["detail"]["error"]
    table = kiln.run("refresh", "refresh-app", "--policy", str(refreshable.policy), check=False)
    assert table.returncode == 1 and "failed" in table.stdout

    # the broken update is withdrawn, and the lock goes back to the first version's (as a
    # kiln lock against a mirror without the security suite would): the bake is a cache
    # hit on refresh-app:1, whose bytes are the newest version again, under a new number
    repo.debs["bookworm-security"] = [
        deb for deb in repo.debs["bookworm-security"] if "broken" not in deb.name
    ]
    repo.index("bookworm-security")
    refreshable.recipe.with_name("refresh-app.toml.lock").write_text(refreshable.first_lock)
    back = kiln.json("bake", str(refreshable.recipe))
    assert back["cached"] and back["again_of"] == before and back["digest"] == first["digest"]
    plan = kiln.json("propagate", "refresh-app", "--dry-run")
    assert plan["origin"] == back["ref"], "the newest version now"
    assert [i["name"] for i in plan["items"]] == ["refresh-child"], "its children follow"

    # kiln-patch 1.0 is outdated again: the refresh bumps the lock to the exact lock of
    # the version it refreshed to before, and those bytes become the newest, are tested
    # and promoted; refresh-child already is on them, so nothing is to propagate
    code, data = refresh(refreshable, "--security-only", "--promote", "staging", "--fetch")
    assert code == 0, data
    [image] = data["images"]
    assert image["previous"] == back["ref"] and image["state"] == "refreshed", image
    assert image["steps"]["bake"]["again_of"] == new, "the lock is the one it was baked from"
    assert image["ref"] not in (new, back["ref"])
    assert image["digest"] == new_digest and staging(kiln) == image["ref"]
    plan = kiln.json("propagate", "refresh-app", "--dry-run")
    assert plan["origin"] == image["ref"] and plan["items"] == []
    code, again = refresh(refreshable, "--security-only", "--promote", "staging")
    assert code == 0 and again["images"] == [], "not stuck: nothing is left to refresh"
