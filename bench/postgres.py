"""A throw-away PostgreSQL cluster on a Unix socket, for benchmarks and tests that need a
shared catalog (KILN_CATALOG_URL) without touching the host's own PostgreSQL."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class Missing(Exception):
    """PostgreSQL is not installed (scripts/setup installs it)."""


def pg_bin(tool: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not found:
        raise Missing("PostgreSQL is not installed: run scripts/setup")
    return str(found[-1])


def as_postgres(*argv: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv}: {result.stdout}{result.stderr}")


@dataclass
class Postgres:
    """A running cluster; each user takes databases of its own."""

    sockets: Path
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def database(self) -> str:
        """A new, empty database, as an SQLAlchemy URL for KILN_CATALOG_URL."""
        name = f"kiln{next(self._numbers)}"
        as_postgres(pg_bin("createdb"), "-h", str(self.sockets), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@/{name}?host={self.sockets}"


@contextmanager
def cluster() -> Iterator[Postgres]:
    """Start a cluster, stop and remove it after.

    PostgreSQL refuses to run as root, and the postgres user cannot enter pytest's private
    temp folders: the cluster gets a folder of its own under /tmp.
    """
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
            yield Postgres(sockets)
        finally:
            as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(base)
