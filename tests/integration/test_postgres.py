"""The catalog in a real PostgreSQL server (a throw-away cluster on a Unix socket)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, Kiln


def pg_bin(tool: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/setup")
    return str(found[-1])


def as_postgres(*argv: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    # PostgreSQL refuses to run as root, and the postgres user cannot enter pytest's
    # private temp folders: the cluster gets a folder of its own under /tmp.
    base = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    base.chmod(0o755)
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(sockets, "postgres", "postgres")
    try:
        as_postgres(pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-k {sockets} -c listen_addresses=''"
        as_postgres(
            pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o", options, "start"
        )
        try:
            as_postgres(pg_bin("createdb"), "-h", str(sockets), "-U", "postgres", "kiln")
            yield f"postgresql+psycopg://postgres@/kiln?host={sockets}"
        finally:
            as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(base)


def test_catalog_in_postgresql(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CATALOG_URL", postgres_url)
    kiln = Kiln(tmp_path / "home")
    first = kiln.json("bake", str(EXAMPLES / "tiny.toml"))
    again = kiln.json("bake", str(EXAMPLES / "tiny.toml"))
    assert not first["cached"] and again["cached"] and again["digest"] == first["digest"]
    [image] = kiln.json("images")
    assert image["ref"] == "tiny:1" and image["packages"] == 1
    assert kiln.json("inspect", "tiny")["packages"][0]["name"] == "busybox-static"
    assert kiln.json("fsck")["ok"]
    assert not (kiln.home / "catalog.db").exists(), "the SQLite default was not used"
