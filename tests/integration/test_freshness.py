"""kiln outdated, kiln where's freshness and the fresh gate, against images whose own apt
sources name a loopback repository with real bookworm and bookworm-security suites."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.postgres import Postgres
from tests.integration.aptrepo import SUITES, AptRepo, served, write_recipes
from tests.integration.conftest import Kiln

PACKAGES = ["kiln-demo", "kiln-tilde", "kiln-epoch"]


@dataclass
class Fresh:
    kiln: Kiln
    repo: AptRepo
    folder: Path
    ref: str  # the fresh-app image


@pytest.fixture(scope="module")
def fresh_images(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    """fresh-base (base, its apt sources: the loopback repository only) and fresh-app on
    it with three packages installed from bookworm."""
    scratch = tmp_path_factory.mktemp("freshness")
    with served(scratch / "repo") as repo:
        repo.add("bookworm", "kiln-demo", "1.0")
        repo.add("bookworm", "kiln-tilde", "1.0")
        repo.add("bookworm", "kiln-epoch", "1:1.0")
        write_recipes(scratch / "recipes", repo, PACKAGES)
        results = baked.json("bake", str(scratch / "recipes"))
        [app] = [r["ref"] for r in results if r["name"] == "fresh-app"]
        yield Fresh(baked, repo, scratch, app)


def outdated(kiln: Kiln, *args: str) -> tuple[int, dict[str, Any]]:
    import json

    result = kiln.run("outdated", *args, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def updates_of(data: dict[str, Any], ref: str) -> dict[str, dict[str, Any]]:
    [image] = [i for i in data["images"] if i["ref"] == ref]
    return {u["package"]: u for u in image["updates"]}


def test_outdated_security_order_where_and_gate(fresh_images: Fresh) -> None:
    kiln, repo, ref = fresh_images.kiln, fresh_images.repo, fresh_images.ref

    code, data = outdated(kiln, "fresh-app", "fresh-base")
    assert code == 0, data
    [image] = [i for i in data["images"] if i["ref"] == ref]
    assert image["sources"]["own"] is True
    assert image["sources"]["lines"] == sorted(repo.lines())
    assert image["updates"] == [] and image["counts"]["updates"] == 0

    # versions that only look newer as strings: 1.0~rc2 < 1.0, 2.0 < 1:1.0
    repo.add("bookworm", "kiln-tilde", "1.0~rc2")
    repo.add("bookworm", "kiln-epoch", "2.0")
    repo.add("bookworm-security", "kiln-demo", "1.0+deb12u1")
    code, data = outdated(kiln, "fresh-app", "--fetch")
    assert code == 1
    found = updates_of(data, ref)
    assert set(found) == {"kiln-demo"}, found
    demo = found["kiln-demo"]
    assert demo["installed"] == "1.0" and demo["available"] == "1.0+deb12u1"
    assert demo["suite"] == "bookworm-security" and demo["security"] is True
    assert demo["first_seen"] is not None

    # an upgrade only in bookworm is not a security one; an epoch orders it
    repo.add("bookworm", "kiln-epoch", "1:1.1")
    code, data = outdated(kiln, "fresh-app", "--refresh")  # --fetch's old spelling
    assert code == 1
    found = updates_of(data, ref)
    assert set(found) == {"kiln-demo", "kiln-epoch"}
    epoch = found["kiln-epoch"]
    assert (epoch["installed"], epoch["available"]) == ("1:1.0", "1:1.1")
    assert epoch["suite"] == "bookworm" and epoch["security"] is False
    [image] = [i for i in data["images"] if i["ref"] == ref]
    assert image["counts"] == {"updates": 2, "security": 1, "other": 1}

    # a warm run needs no repository at all
    code, offline = outdated(kiln, "fresh-app", "--offline")
    assert code == 1 and updates_of(offline, ref) == found

    table = kiln.run("outdated", "fresh-app", "--offline", check=False)
    assert table.returncode == 1
    assert "kiln-demo" in table.stdout and "bookworm-security (security)" in table.stdout

    where = kiln.json("where")
    [row] = [r for r in where["images"] if r["name"] == "fresh-app"]
    assert row["latest"]["freshness"]["security"] == 1
    assert row["latest"]["freshness"]["other"] == 1
    assert row["latest"]["freshness"]["checked"] is not None
    [version] = [v for v in kiln.json("where", "fresh-app")["versions"] if v["ref"] == ref]
    assert version["freshness"]["security"] == 1
    assert "1 security" in kiln.run("where").stdout

    # the gate: a week is fine, an hour is not once the sighting is two hours old
    policy = fresh_images.folder / "kiln.toml"
    policy.write_text(
        '[channels.staging]\nmax_security_age = "7d"\n\n[channels.prod]\nmax_security_age = "1h"\n'
    )
    promoted = kiln.json("promote", ref, "staging", "--policy", str(policy))
    assert promoted["promoted"], promoted
    assert [g["gate"] for g in promoted["gates"]] == ["revoked", "fresh"]
    with sqlite3.connect(kiln.home / "catalog.db") as db:
        db.execute(
            "UPDATE update_sightings SET first_seen = datetime(first_seen, '-2 hours')"
            " WHERE package = 'kiln-demo'"
        )
    refused = kiln.run("promote", ref, "prod", "--policy", str(policy), "--json", check=False)
    assert refused.returncode == 1
    import json

    result = json.loads(refused.stdout)
    assert result["unmet"] == ["fresh"]
    why = next(g["why"] for g in result["gates"] if g["gate"] == "fresh")
    assert "kiln-demo" in why and "1.0+deb12u1" in why and "bookworm-security" in why
    assert "kiln refresh fresh-app" in why


def test_an_inline_signed_by_key_checks_the_image_s_suites(baked: Kiln, tmp_path: Path) -> None:
    """An image whose deb822 sources hold the repository's key inline (Signed-By: and the
    armoured block) is checked against that signed repository, its key kept as an .asc
    keyring of kiln's apt cache."""
    import hashlib

    with served(tmp_path / "repo", signed=True) as repo:
        assert repo.signer is not None
        key = repo.signer.armoured
        folded = "".join(f" {line or '.'}\n" for line in key.splitlines())
        recipes = tmp_path / "recipes"
        recipes.mkdir()
        (recipes / "keyed.sources").write_text(
            f"Types: deb\nURIs: {repo.url}\nSuites: {' '.join(SUITES)}\nComponents: main\n"
            f"Signed-By:\n{folded}"
        )
        (recipes / "fresh-keyed.toml").write_text(
            '[image]\nname = "fresh-keyed"\nparent = "base"\n\n[[steps]]\n'
            'run = "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*"\n\n[[steps]]\n'
            'copy = "keyed.sources"\nto = "/etc/apt/sources.list.d/keyed.sources"\n'
        )
        ref = baked.json("bake", str(recipes / "fresh-keyed.toml"))["ref"]
        code, data = outdated(baked, ref, "--fetch")
        assert code == 0, data
        [image] = data["images"]
        keyring = baked.home / "cache" / "apt-indexes" / "keyrings"
        keyring /= f"{hashlib.sha256(key.encode()).hexdigest()}.asc"
        assert image["sources"]["own"] is True and image["notes"] == []
        assert image["sources"]["lines"] == [
            f"deb [signed-by={keyring}] {repo.url} {suite} main" for suite in sorted(SUITES)
        ]
        assert image["sources"]["checked"] is not None
        assert keyring.read_text() == key


def test_first_sightings_in_postgresql(postgres: Postgres) -> None:
    """The insert that lets a rival's row stand is PostgreSQL's ON CONFLICT as well."""
    from datetime import UTC, datetime, timedelta

    from kiln.apt.indexes import Available
    from kiln.catalog import Catalog
    from kiln.lifecycle import freshness

    catalog = Catalog(postgres.database())
    try:
        fix = Available(
            "libc6", "amd64", "2.36-9+deb12u7", "bookworm-security", True, "", "", 0, ""
        )
        newest = Available("libc6", "amd64", "2.36-9+deb12u14", "bookworm", False, "", "", 0, "")
        update = freshness.Update("libc6", "amd64", "2.36-9+deb12u4", newest, fix=fix)
        early = datetime.now(UTC) - timedelta(days=2)
        with catalog.session() as session:
            assert freshness.record(session, [update], early) == 2
        with catalog.session() as session:
            freshness.record(session, [update], datetime.now(UTC))
        seen = freshness.sightings(catalog.lookup())
        assert set(seen) == {freshness.key_of(fix), freshness.key_of(newest)}
        assert all(abs((at - early).total_seconds()) < 1 for at in seen.values())
        [found] = freshness.with_first_seen([update], seen)
        assert found.fix_seen is not None and not found.unseen
    finally:
        catalog.close()
