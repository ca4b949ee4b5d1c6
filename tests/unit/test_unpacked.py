"""The unpacked-layer cache and the verified unpack behind it (real GNU tar, on tmp_path).

These use plain tar layers, as stores written before layers were compressed hold them;
tests/unit/test_capture.py covers the compressed ones kiln captures now.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from kiln.errors import StoreError
from kiln.home import Home
from kiln.store import layer, unpacked
from kiln.store.layout import MEDIA_LAYER, Descriptor, Layout
from tests.unit.conftest import layout_of

GIB = 1 << 30


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello from a layer\n" * 200)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(300_000))
    os.chmod(root / "bin" / "tool", 0o755)
    os.symlink("tool", root / "bin" / "alias")
    return root


def capture(home: Home, tree: Path) -> Descriptor:
    """A plain tar layer, as stores written before layers were compressed hold them."""
    tar = subprocess.run(layer.tar_argv(tree), check=True, stdout=subprocess.PIPE).stdout
    return layout_of(home).put_bytes(tar, MEDIA_LAYER)


def data_offset(blob: Path, name: str) -> int:
    """Where the content of member ``name`` starts in the blob (not a header)."""
    with tarfile.open(blob) as archive:
        for member in archive:
            if member.name.removeprefix("./") == name:
                return member.offset_data
    raise AssertionError(f"{name} is not in {blob}")


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def leftovers(home: Home) -> list[str]:
    return sorted(p.name for p in home.tmp.iterdir() if p.name != ".lock")


def test_ensure_unpacks_once_into_layers(home: Home, tmp_path: Path) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    target = unpacked.ensure(home, layout_of(home), blob, blob.digest, "test:1 layer 0")
    assert target == home.layers / blob.hex
    assert (target / "etc" / "motd").read_text() == "hello from a layer\n" * 200
    assert (target / "bin" / "tool").read_bytes() == (tmp_path / "tree/bin/tool").read_bytes()
    assert os.readlink(target / "bin" / "alias") == "tool"
    assert leftovers(home) == []
    inode = target.stat().st_ino
    assert unpacked.ensure(home, layout_of(home), blob, blob.digest, "x").stat().st_ino == inode


def test_a_corrupt_byte_in_file_data_is_refused_and_leaves_nothing(
    home: Home, tmp_path: Path
) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    path = layout_of(home).blob_path(blob.digest)
    flip_byte(path, data_offset(path, "bin/tool") + 1000)
    with pytest.raises(StoreError) as caught:
        unpacked.ensure(home, layout_of(home), blob, blob.digest, "test:1 layer 0")
    error = caught.value
    assert blob.digest in error.message and "test:1 layer 0" in error.message
    assert "corrupt" in error.message and error.hint and "kiln fsck" in error.hint
    assert not (home.layers / blob.hex).exists()
    assert leftovers(home) == []


def test_a_corrupt_header_is_reported_as_a_corrupt_blob(home: Home, tmp_path: Path) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    path = layout_of(home).blob_path(blob.digest)
    with path.open("r+b") as handle:  # garbage over the first headers: tar gives up early
        handle.write(b"\x17" * 4096)
    with pytest.raises(StoreError, match="corrupt: its content hashes to"):
        layer.unpack(layout_of(home), blob, tmp_path / "out", "test layer")
    assert not (tmp_path / "out").exists()


def test_a_missing_or_short_blob_is_refused_even_when_unpacked(home: Home, tmp_path: Path) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    target = unpacked.ensure(home, layout_of(home), blob, blob.digest, "test:1 layer 0")
    path = layout_of(home).blob_path(blob.digest)
    os.truncate(path, blob.size - 512)
    with pytest.raises(StoreError, match=f"blob {blob.digest} is {blob.size - 512} bytes"):
        unpacked.ensure(home, layout_of(home), blob, blob.digest, "test:1 layer 0")
    path.unlink()
    with pytest.raises(StoreError, match=f"test:1 layer 0: blob {blob.digest} is missing"):
        unpacked.ensure(home, layout_of(home), blob, blob.digest, "test:1 layer 0")
    assert target.is_dir()  # the cache is left alone; fsck and a rebake deal with it


def test_a_diff_id_that_is_not_a_digest_is_refused(home: Home, tmp_path: Path) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    for diff_id in ("sha256:../../etc", "../x", blob.digest.upper()):
        with pytest.raises(StoreError, match="not a layer diff_id"):
            unpacked.ensure(home, layout_of(home), blob, diff_id, "test layer")
    other = "sha256:" + "0" * 64
    with pytest.raises(StoreError, match=r"not a tar layer .* with diff_id"):
        unpacked.ensure(home, layout_of(home), blob, other, "test layer")


def test_the_loser_of_a_rename_race_keeps_the_winners_copy(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rival process finishes the same layer while this one unpacks it."""
    blob = capture(home, make_tree(tmp_path / "tree"))
    real_unpack = layer.unpack
    target = home.layers / blob.hex

    def unpack_while_a_rival_finishes(
        layout: Layout, descriptor: Descriptor, dest: Path, what: str, diff_id: str | None
    ) -> None:
        real_unpack(layout, descriptor, dest, what, diff_id)
        real_unpack(layout, descriptor, target, what)  # the rival's rename landed first
        (target / "rival").write_text("mine")

    monkeypatch.setattr(layer, "unpack", unpack_while_a_rival_finishes)
    got = unpacked.ensure(home, layout_of(home), blob, blob.digest, "test layer")
    assert got == target and (target / "rival").read_text() == "mine"
    assert (target / "etc" / "motd").is_file()
    assert leftovers(home) == []


def test_something_else_in_place_of_a_layer_folder_is_refused(home: Home, tmp_path: Path) -> None:
    blob = capture(home, make_tree(tmp_path / "tree"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, home.layers / blob.hex)
    with pytest.raises(StoreError, match="is not a folder"):
        unpacked.ensure(home, layout_of(home), blob, blob.digest, "test layer")
    assert not any(elsewhere.iterdir())


def test_sparse_files_stay_sparse_in_the_blob_and_the_unpacked_layer(
    home: Home, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with (tree / "disk.img").open("wb") as handle:
        handle.truncate(GIB)
        handle.seek(GIB // 2)
        handle.write(b"middle")
    blob = capture(home, tree)
    assert blob.size < 64 * 1024
    again = capture(home, tree)
    assert again == blob, "a sparse file must not make the blob differ between captures"
    target = unpacked.ensure(home, layout_of(home), blob, blob.digest, "test layer")
    st = os.stat(target / "disk.img")
    assert st.st_size == GIB
    assert st.st_blocks * 512 <= 64 * 1024, "holes were filled in on unpack"
    with (target / "disk.img").open("rb") as handle:
        handle.seek(GIB // 2 - 2)
        assert handle.read(10) == b"\0\0middle\0\0"


def test_a_blob_that_is_not_a_tar_fails_with_tars_words(home: Home, tmp_path: Path) -> None:
    """The digest is right but tar cannot read it: a failed unpack, not a corrupt blob."""
    junk = layout_of(home).put_bytes(b"this is not a tar archive\n" * 1000, MEDIA_LAYER)
    with pytest.raises(StoreError) as caught:
        unpacked.ensure(home, layout_of(home), junk, junk.digest, "junk:1 layer 0")
    message = caught.value.message
    assert "junk:1 layer 0: unpacking blob" in message and "tar exited 2" in message
    assert "does not look like a tar archive" in message
    assert not (home.layers / junk.hex).exists() and leftovers(home) == []
