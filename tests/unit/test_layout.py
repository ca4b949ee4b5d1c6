"""The OCI image layout (blobs and index.json) and the catalog's image refs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiln import refs
from kiln.catalog import Catalog, Image
from kiln.catalog.db import Conflict
from kiln.catalog.lookup import Lookup, open_sqlite, sqlite_path
from kiln.digests import canonical_json
from kiln.errors import BadInput, NotFound, StoreError
from kiln.store.layout import (
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER,
    MEDIA_MANIFEST,
    REF_ANNOTATION,
    Descriptor,
    Layout,
)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    store = Layout(tmp_path / "oci")
    store.init()
    return store


def blob_files(layout: Layout) -> list[Path]:
    return sorted(layout.blobs.iterdir())


def stored_manifest(layout: Layout, name: str = "layer") -> Descriptor:
    layer = layout.put_bytes(name.encode(), MEDIA_LAYER)
    config = layout.put_json(
        {"rootfs": {"type": "layers", "diff_ids": [layer.digest]}}, MEDIA_CONFIG
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }
    return layout.put_json(manifest, MEDIA_MANIFEST)


# --- blobs ---


def test_init_writes_a_valid_empty_layout(layout: Layout) -> None:
    assert json.loads((layout.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.root / "index.json").read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
    assert layout.blobs.is_dir()
    assert layout.refs() == {}


def test_init_keeps_an_existing_index(layout: Layout) -> None:
    manifest = stored_manifest(layout)
    layout.tag("web:1", manifest)
    layout.init()
    assert layout.resolve("web:1") == layout.refs()["web:1"]


def test_put_bytes_is_content_addressed(layout: Layout) -> None:
    data = b"hello kiln\n"
    descriptor = layout.put_bytes(data, MEDIA_LAYER)
    hexdigest = hashlib.sha256(data).hexdigest()
    assert descriptor == Descriptor(MEDIA_LAYER, f"sha256:{hexdigest}", len(data))
    assert descriptor.hex == hexdigest
    assert layout.blob_path(descriptor.digest) == layout.blobs / hexdigest
    assert (layout.blobs / hexdigest).read_bytes() == data
    assert layout.read_bytes(descriptor.digest) == data
    assert layout.has_blob(descriptor.digest)


def test_put_bytes_is_idempotent(layout: Layout) -> None:
    first = layout.put_bytes(b"same", MEDIA_LAYER)
    stamp = layout.blob_path(first.digest).stat().st_mtime_ns
    second = layout.put_bytes(b"same", MEDIA_LAYER)
    assert first == second
    assert blob_files(layout) == [layout.blob_path(first.digest)]
    assert layout.blob_path(first.digest).stat().st_mtime_ns == stamp  # not rewritten
    layout.put_bytes(b"different", MEDIA_LAYER)
    assert len(blob_files(layout)) == 2
    assert not [p for p in layout.blobs.parent.rglob("*.tmp")]


def test_put_json_is_canonical(layout: Layout) -> None:
    one = layout.put_json({"b": 1, "a": [1, 2]}, MEDIA_CONFIG)
    two = layout.put_json({"a": [1, 2], "b": 1}, MEDIA_CONFIG)
    assert one == two
    assert layout.read_bytes(one.digest) == b'{"a":[1,2],"b":1}'
    assert layout.read_json(one.digest) == {"a": [1, 2], "b": 1}


def test_canonical_json_keeps_unicode() -> None:
    assert canonical_json({"é": "ü", "a": None}) == '{"a":null,"é":"ü"}'.encode()


def test_blob_writer_commits_under_its_digest(layout: Layout, tmp_path: Path) -> None:
    writer = layout.writer(tmp_path / "tmp")
    writer.write(b"part one, ")
    writer.write(memoryview(b"part two"))
    descriptor = writer.commit(MEDIA_LAYER)
    assert descriptor.size == len(b"part one, part two")
    assert layout.read_bytes(descriptor.digest) == b"part one, part two"
    assert descriptor.digest == "sha256:" + hashlib.sha256(b"part one, part two").hexdigest()
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []


def test_blob_writer_abort_leaves_nothing(layout: Layout, tmp_path: Path) -> None:
    writer = layout.writer(tmp_path / "tmp")
    writer.write(b"half")
    writer.abort()
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []
    assert blob_files(layout) == []


@pytest.mark.parametrize(
    "digest", ["sha512:" + "a" * 64, "sha256:abc", "a" * 64, "sha256:" + "a" * 65]
)
def test_unsupported_digest_raises_store_error(layout: Layout, digest: str) -> None:
    with pytest.raises(StoreError, match="unsupported digest"):
        layout.blob_path(digest)


def test_missing_blob_raises_store_error(layout: Layout) -> None:
    with pytest.raises(StoreError, match="missing"):
        layout.read_bytes("sha256:" + "0" * 64)
    assert not layout.has_blob("sha256:" + "0" * 64)


def test_descriptor_json_round_trip() -> None:
    descriptor = Descriptor(MEDIA_MANIFEST, "sha256:" + "1" * 64, 12, ((REF_ANNOTATION, "a:1"),))
    data = descriptor.to_json()
    assert data == {
        "mediaType": MEDIA_MANIFEST,
        "digest": "sha256:" + "1" * 64,
        "size": 12,
        "annotations": {REF_ANNOTATION: "a:1"},
    }
    assert Descriptor.from_json(data) == descriptor
    assert "annotations" not in Descriptor(MEDIA_LAYER, "sha256:" + "1" * 64, 1).to_json()


# --- index.json ---


def test_tag_refs_resolve_untag(layout: Layout) -> None:
    one = stored_manifest(layout, "one")
    two = stored_manifest(layout, "two")
    layout.tag("web:1", one)
    layout.tag("web:2", two)
    layout.tag("base:1", one)
    refs = layout.refs()
    assert set(refs) == {"web:1", "web:2", "base:1"}
    assert refs["web:1"].digest == one.digest
    assert refs["web:1"].annotations == ((REF_ANNOTATION, "web:1"),)
    assert layout.resolve("web:2").digest == two.digest
    assert layout.resolve("web:2").size == two.size
    layout.untag("web:1")
    assert set(layout.refs()) == {"web:2", "base:1"}
    with pytest.raises(NotFound):
        layout.resolve("web:1")
    assert layout.has_blob(one.digest)  # untagging drops the name, not the blob
    layout.untag("never:1")  # untagging an unknown ref is a no-op
    assert set(layout.refs()) == {"web:2", "base:1"}


def test_tagging_a_ref_again_moves_it(layout: Layout) -> None:
    one = stored_manifest(layout, "one")
    two = stored_manifest(layout, "two")
    layout.tag("web:latest", one)
    layout.tag("web:latest", two)
    index = json.loads((layout.root / "index.json").read_bytes())
    assert len(index["manifests"]) == 1
    assert layout.resolve("web:latest").digest == two.digest


def test_tagging_a_manifest_that_is_not_stored_raises(layout: Layout) -> None:
    ghost = Descriptor(MEDIA_MANIFEST, "sha256:" + "f" * 64, 10)
    with pytest.raises(StoreError, match="not stored"):
        layout.tag("web:1", ghost)
    assert layout.refs() == {}


def test_index_json_stays_valid(layout: Layout) -> None:
    manifests = [stored_manifest(layout, str(n)) for n in range(5)]
    for number, manifest in enumerate(manifests):
        layout.tag(f"app:{number}", manifest)
    layout.untag("app:2")
    index = json.loads((layout.root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_INDEX
    assert [m["annotations"][REF_ANNOTATION] for m in index["manifests"]] == [
        "app:0",
        "app:1",
        "app:3",
        "app:4",
    ]
    for entry in index["manifests"]:
        assert entry["mediaType"] == MEDIA_MANIFEST
        assert layout.has_blob(entry["digest"])
        assert entry["size"] == len(layout.read_bytes(entry["digest"]))
    assert not [p.name for p in layout.root.iterdir() if p.name.endswith(".tmp")]


def test_not_found_for_unknown_ref(layout: Layout) -> None:
    with pytest.raises(NotFound, match="no image web:9"):
        layout.resolve("web:9")


def test_refs_of_a_missing_index_is_empty(tmp_path: Path) -> None:
    assert Layout(tmp_path / "nothing").refs() == {}


# --- catalog refs ---


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog(f"sqlite:///{tmp_path}/c.db")
    yield opened
    opened.close()


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image(name: str, version: int, status: str = "ok", parent: Image | None = None) -> Image:
    return Image(
        name=name,
        version=version,
        digest=digest_of(f"{name}:{version}"),
        config_digest=digest_of(f"config {name}:{version}"),
        cache_key=hashlib.sha256(f"key {name}:{version}".encode()).hexdigest(),
        recipe_path=f"/recipes/{name}.toml",
        recipe_digest="0" * 64,
        origin="parent" if parent else "bootstrap",
        created=datetime(2024, 1, version, tzinfo=UTC),
        status=status,
        size=1000 * version,
        seconds=1.5,
        parent=parent,
    )


@pytest.fixture
def filled(catalog: Catalog) -> Catalog:
    with catalog.session() as session:
        base = image("base", 1)
        session.add_all(
            [
                base,
                image("web", 1, parent=base),
                image("web", 2, parent=base),
                image("web", 3, parent=base),
                image("web", 4, status="failed", parent=base),
            ]
        )
    return catalog


@pytest.fixture(params=["sqlite3", "engine"])
def lookup(filled: Catalog, request: pytest.FixtureRequest) -> Iterator[Lookup]:
    """The one lookup, through the standard library and through SQLAlchemy's engine."""
    if request.param == "sqlite3":
        path = sqlite_path(filled.url)
        assert path is not None
        found = open_sqlite(path)
        assert found is not None
    else:
        found = filled.lookup()
    yield found
    found.close()


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        ("web", 3),  # the newest good version
        ("web:latest", 3),
        ("web:2", 2),
        ("web:1", 1),
        ("web@" + digest_of("web:1"), 1),
        ("base", 1),
    ],
)
def test_resolve(lookup: Lookup, ref: str, version: int) -> None:
    name = ref.split(":")[0].split("@")[0]
    found = lookup.image(refs.parse(ref))
    assert (found.name, found.version) == (name, version)
    assert found.ref == f"{name}:{version}"


def test_resolve_follows_lineage(filled: Catalog, lookup: Lookup) -> None:
    web = lookup.image(refs.parse("web:2"))
    base = lookup.image(refs.parse("base"))
    assert web.parent_id == base.id
    with filled.reading() as session:
        row = session.get(Image, web.id)
        assert row is not None
        assert [i.ref for i in filled.ancestors(row)] == ["base:1"]
        parent = session.get(Image, base.id)
        assert parent is not None
        assert sorted(child.ref for child in parent.children) == [
            "web:1",
            "web:2",
            "web:3",
            "web:4",
        ]


@pytest.mark.parametrize(
    "ref",
    ["web:4", "web@" + digest_of("web:4"), "web:9", "web@" + digest_of("base:1")],
)
def test_resolve_unknown_version_hints_at_kiln_images(lookup: Lookup, ref: str) -> None:
    with pytest.raises(NotFound) as caught:
        lookup.image(refs.parse(ref))
    assert ref in caught.value.message
    assert caught.value.hint == "'kiln images' lists the versions of web"


def test_resolve_unknown_name_hints_at_baking_it(lookup: Lookup) -> None:
    with pytest.raises(NotFound) as caught:
        lookup.image(refs.parse("db"))
    assert caught.value.hint is not None
    assert 'name = "db"' in caught.value.hint


@pytest.mark.parametrize(
    "ref",
    [
        "Web",
        "web:",
        "web:V1",
        "web:1a",
        "web@sha256:abc",
        "web@" + "a" * 64,
        "",
        "web:1:2",
        " web",
        "web:01",
        "web:0",
    ],
)
def test_malformed_ref_is_bad_input(ref: str) -> None:
    with pytest.raises(BadInput) as caught:
        refs.parse(ref)
    assert not isinstance(caught.value, NotFound)
    assert caught.value.exit_code == 2


def test_latest_is_no_channel() -> None:
    assert refs.parse("web:latest") == refs.Ref("web")
    assert refs.parse("web:prod").channel == "prod"
    assert not refs.is_channel("latest") and not refs.is_channel("3")


def test_next_version(filled: Catalog) -> None:
    with filled.session() as session:
        assert filled.next_version(session, "web") == 5  # failed versions use up a number
        assert filled.next_version(session, "base") == 2
        assert filled.next_version(session, "new") == 1


def test_name_and_version_are_unique(catalog: Catalog) -> None:
    with catalog.session() as session:
        session.add(image("web", 1))
    with pytest.raises(Conflict), catalog.session() as session:
        session.add(image("web", 1))
    with catalog.session() as session:
        assert [i.ref for i in catalog.all_images(session)] == ["web:1"]


def test_by_cache_key_ignores_failed_images(lookup: Lookup) -> None:
    good = lookup.image(refs.parse("web:3"))
    assert lookup.by_cache_key(good.cache_key) == good
    failed_key = hashlib.sha256(b"key web:4").hexdigest()
    assert lookup.by_cache_key(failed_key) is None


def test_a_version_number_is_never_handed_out_twice(filled: Catalog) -> None:
    """The counter outlives the rows: gc removing the newest versions gives no number back."""
    with filled.session() as session:
        assert filled.next_version(session, "web") == 5
    with filled.session() as session:
        for row in session.query(Image).filter(Image.name == "web", Image.version >= 3):
            session.delete(row)
    with filled.session() as session:
        assert filled.next_version(session, "web") == 6
        assert filled.next_version(session, "web") == 7
