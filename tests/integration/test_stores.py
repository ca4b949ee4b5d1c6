"""Two stores (KILN_HOMEs) on one PostgreSQL catalog: each knows which images it holds,
and gc and fsck of one leave the other's rows alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.postgres import Postgres
from kiln import refs
from kiln.catalog import Catalog, holdings
from tests.integration.conftest import EXAMPLES, Kiln


def test_two_stores_share_a_catalog_and_keep_to_their_own_bytes(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.database()
    monkeypatch.setenv("KILN_CATALOG_URL", url)
    a, b = Kiln(tmp_path / "a"), Kiln(tmp_path / "b")
    baked = a.json("bake", str(EXAMPLES / "tiny.toml"))
    store_a = (a.home / "store.id").read_text().strip()
    assert len(store_a) == 32

    [tiny] = b.json("images")
    assert tiny["ref"] == "tiny:1" and tiny["digest"] == baked["digest"]
    [held] = tiny["stores"]
    assert held["place"] == store_a and held["kind"] == "store"
    assert held["home"] == str(a.home) and held["host"] and not held["here"]
    assert not (b.home / "store.id").exists(), "a read makes no store id"
    shown = b.run("images").stdout
    assert "tiny:1" in shown and held["host"] in shown and "here" not in shown, shown

    gone = b.json("gc", "--keep-last", "0")
    assert gone["retention"]["removed"] == [] and gone["removed"]["image"] == 0, gone
    store_b = (b.home / "store.id").read_text().strip()
    assert len(store_b) == 32 and store_b != store_a, "two homes, two stores"
    [kept] = gone["retention"]["kept"]
    assert kept["ref"] == "tiny:1" and kept["reasons"][0].startswith(f"held by store {store_a[:8]}")
    checked = b.json("fsck")
    assert checked["ok"] and checked["faults"] == [], checked
    assert checked["elsewhere"] == [{"ref": "tiny:1", "held": kept["reasons"][0][8:]}]

    catalog = Catalog(url)  # the row as a catalog from before holdings has it: unclaimed
    try:
        row = catalog.lookup().image(refs.parse("tiny:1"))
        with catalog.session() as session:
            holdings.release(session, row.id, store_a)
    finally:
        catalog.close()
    assert b.json("images")[0]["stores"] == []
    claimed = a.json("fsck")  # A tags tiny:1 with the row's digest: it claims the row
    assert claimed["ok"] and claimed["elsewhere"] == [], claimed
    [tiny] = a.json("images")
    assert [s["here"] for s in tiny["stores"]] == [True]
    assert "here" in a.run("images").stdout
    checked = a.json("fsck")
    assert checked["ok"] and checked["elsewhere"] == [], checked
    [version] = b.json("where", "tiny:1")["versions"]
    assert [s["place"] for s in version["stores"]] == [store_a]
    assert f"store on {held['host']} ({a.home})" in b.run("where", "tiny").stdout
