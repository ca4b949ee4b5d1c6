"""Catalog rows for the lifecycle tests: images (with a real one-layer manifest in the
store when a test signs or verifies), test runs and machines, on a real SQLite catalog."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from kiln.app.workspace import Workspace
from kiln.catalog import Image, Machine, TestRun
from kiln.catalog.lifecycle import Assignment
from kiln.catalog.lookup import ImageRow
from kiln.home import Home
from kiln.store.layout import MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST, Descriptor


@pytest.fixture
def workspace(home: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A workspace on the test's own home, with no policy file in reach."""
    monkeypatch.delenv("KILN_CATALOG_URL", raising=False)
    monkeypatch.delenv("KILN_POLICY", raising=False)
    monkeypatch.chdir(home.root)
    opened = Workspace(home)
    yield opened
    opened.close()


def manifest(
    workspace: Workspace, content: bytes, files: dict[str, bytes] | None = None
) -> tuple[Descriptor, Descriptor]:
    """A one-layer image in the store (``hello``, and ``files`` by path, their folders
    made): its manifest and config descriptors."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        folders = sorted({str(p) for path in files or {} for p in Path(path).parents} - {"."})
        for folder in folders:
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(entry)
        for name, data in {"hello": content, **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    layout = workspace.layout
    layer = layout.put_bytes(gzip.compress(plain, mtime=0), MEDIA_LAYER_GZIP)
    diff_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    config = layout.put_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        MEDIA_CONFIG,
    )
    found = layout.put_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json()],
        },
        MEDIA_MANIFEST,
    )
    return found, config


def add_image(
    workspace: Workspace,
    name: str,
    version: int,
    parent: ImageRow | None = None,
    *,
    stored: bool = False,
    files: dict[str, bytes] | None = None,
    bytes_of: ImageRow | None = None,
) -> ImageRow:
    """An image row as a bake leaves it (``stored``: its bytes in the store too, with
    ``files`` in its layer; ``bytes_of``: an older version's bytes, numbered anew)."""
    content = f"{name}:{version}".encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    config_digest = digest
    if bytes_of is not None:
        digest, config_digest = bytes_of.digest, bytes_of.config_digest
    if stored:
        found, config = manifest(workspace, content, files)
        digest, config_digest = found.digest, config.digest
        workspace.layout.tag(f"{name}:{version}", found)
    with workspace.catalog.session() as session:
        row = Image(
            name=name,
            version=version,
            digest=digest,
            config_digest=config_digest,
            parent_id=parent.id if parent else None,
            cache_key=hashlib.sha256(b"key " + content).hexdigest(),
            recipe_path=f"/recipes/{name}.toml",
            recipe_digest="0" * 64,
            origin="parent" if parent else "scratch",
            created=datetime.now(UTC),
            status="ok",
            size=1,
            seconds=0.0,
        )
        session.add(row)
        session.flush()
        image_id = row.id
    return workspace.lookup.by_id(image_id)


def add_test_run(
    workspace: Workspace, image: ImageRow, ok: bool, converge: bool | None = None, ago: float = 0
) -> None:
    with workspace.catalog.session() as session:
        session.add(
            TestRun(
                image_id=image.id,
                machine=f"test-{image.name}",
                started=datetime.now(UTC) - timedelta(seconds=ago),
                ok=ok,
                seconds=1.0,
                converge=converge,
            )
        )


def add_machine(workspace: Workspace, name: str, image: ImageRow) -> None:
    """A machine row whose folder is not there (``kiln ps`` shows it as missing)."""
    with workspace.catalog.session() as session:
        session.add(
            Machine(
                name=name,
                image_id=image.id,
                image_ref=image.ref,
                digest=image.digest,
                folder=str(workspace.home.root / "machines" / name),
                created=datetime.now(UTC),
                nspawn_pid=0,
                leader_pid=0,
            )
        )


def age_channel(workspace: Workspace, name: str, channel: str, seconds: float) -> None:
    """Move every assignment of the channel ``seconds`` into the past."""
    with workspace.catalog.session() as session:
        for row in session.query(Assignment).filter_by(name=name, channel=channel):
            session.execute(
                update(Assignment)
                .where(Assignment.id == row.id)
                .values(at=row.at - timedelta(seconds=seconds))
            )


def write_policy(folder: Path, text: str) -> Path:
    path = folder / "kiln.toml"
    path.write_text(text)
    return path
