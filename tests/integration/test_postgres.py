"""The catalog in a real PostgreSQL server (a throw-away cluster on a Unix socket)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.postgres import Postgres
from tests.integration.conftest import EXAMPLES, Kiln


def test_catalog_in_postgresql(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CATALOG_URL", postgres.database())
    kiln = Kiln(tmp_path / "home")
    first = kiln.json("bake", str(EXAMPLES / "tiny.toml"))
    again = kiln.json("bake", str(EXAMPLES / "tiny.toml"))
    assert not first["cached"] and again["cached"] and again["digest"] == first["digest"]
    [image] = kiln.json("images")
    assert image["ref"] == "tiny:1" and image["packages"] == 1
    assert kiln.json("inspect", "tiny")["packages"][0]["name"] == "busybox-static"
    assert kiln.json("fsck")["ok"]
    assert not (kiln.home / "catalog.db").exists(), "the SQLite default was not used"
