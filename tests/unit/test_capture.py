"""Compressed layers: capture hashes the tar stream and the gzip blob in one pass, unpack
checks both, and the bytes do not depend on the run (real GNU tar, on tmp_path)."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from isal import isal_zlib

from kiln import proc
from kiln.errors import StoreError
from kiln.home import Home
from kiln.store import layer, unpacked
from kiln.store.layout import CHUNK, MEDIA_LAYER_GZIP, Descriptor
from tests.unit.conftest import layout_of


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello from a layer\n" * 2000)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(random.Random(7).randbytes(3_000_000))  # 3 chunks
    os.symlink("tool", root / "bin" / "alias")
    for name in ("etc/motd", "bin/tool", "bin/alias", "etc", "bin", "."):
        path = root / name
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return root


def plain_tar(tree: Path) -> bytes:
    return subprocess.run(layer.tar_argv(tree), check=True, stdout=subprocess.PIPE).stdout


def leftovers(home: Home) -> list[str]:
    return sorted(p.name for p in home.tmp.iterdir() if p.name != ".lock")


def test_capture_compresses_and_names_both_digests(home: Home, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    captured = layer.capture(layout_of(home), home.tmp, tree)
    blob = layout_of(home).blob_path(captured.descriptor.digest).read_bytes()
    assert captured.descriptor.media_type == MEDIA_LAYER_GZIP
    assert blob[:10] == bytes.fromhex("1f8b08000000000000ff")  # no name, no time
    assert captured.descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert captured.descriptor.size == len(blob)
    tar = gzip.decompress(blob)
    assert tar == plain_tar(tree), "the blob holds exactly what GNU tar wrote"
    assert captured.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert len(blob) < len(tar) - 30_000  # the motd compresses, the random bytes do not
    assert leftovers(home) == []


def test_capture_is_byte_stable_and_as_the_pinned_compressor_makes_it(
    home: Home, tmp_path: Path
) -> None:
    first = layer.capture(layout_of(home), home.tmp, make_tree(tmp_path / "a"))
    second = layer.capture(layout_of(home), home.tmp, make_tree(tmp_path / "b" / "c"))
    assert first == second
    tar = plain_tar(tmp_path / "a")
    deflate = isal_zlib.compressobj(layer.GZIP_LEVEL, isal_zlib.DEFLATED, 31)
    blob = b"".join(deflate.compress(tar[i : i + CHUNK]) for i in range(0, len(tar), CHUNK))
    blob += deflate.flush()  # whole 1 MiB pieces, as capture feeds it
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == first.descriptor.digest


def test_ensure_unpacks_a_compressed_layer_under_its_diff_id(home: Home, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    captured = layer.capture(layout_of(home), home.tmp, tree)
    target = unpacked.ensure(
        home, layout_of(home), captured.descriptor, captured.diff_id, "test:1 layer 0"
    )
    assert target == home.layers / captured.diff_id.split(":", 1)[1]
    assert (target / "bin" / "tool").read_bytes() == (tree / "bin" / "tool").read_bytes()
    assert os.readlink(target / "bin" / "alias") == "tool"
    assert leftovers(home) == []


def test_a_flipped_byte_in_a_compressed_blob_is_a_corrupt_blob(home: Home, tmp_path: Path) -> None:
    captured = layer.capture(layout_of(home), home.tmp, make_tree(tmp_path / "tree"))
    path = layout_of(home).blob_path(captured.descriptor.digest)
    for offset in (20, captured.descriptor.size // 2):  # a frame header, then deep inside
        data = bytearray(path.read_bytes())
        original = data[offset]
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="is corrupt: its content hashes to") as caught:
            unpacked.ensure(
                home, layout_of(home), captured.descriptor, captured.diff_id, "test:1 layer 0"
            )
        assert caught.value.hint and "kiln fsck" in caught.value.hint
        assert not (home.layers / captured.diff_id.split(":", 1)[1]).exists()
        assert leftovers(home) == []
        data[offset] = original
        path.write_bytes(bytes(data))


def test_a_diff_id_the_blob_does_not_unpack_to_is_refused(home: Home, tmp_path: Path) -> None:
    captured = layer.capture(layout_of(home), home.tmp, make_tree(tmp_path / "tree"))
    other = "sha256:" + "1" * 64
    with pytest.raises(StoreError, match=f"diff_id is {other}"):
        unpacked.ensure(home, layout_of(home), captured.descriptor, other, "test:1 layer 0")
    assert not (home.layers / ("1" * 64)).exists() and leftovers(home) == []


def test_a_blob_that_does_not_decompress_says_so(home: Home, tmp_path: Path) -> None:
    """The digest is right (it was stored that way), the gzip stream is not."""
    diff_id = "sha256:" + "2" * 64
    for data in (b"not gzip at all\n" * 1000, b"\x1f\x8b\x08\x00" + b"\x17" * 4000):
        junk = layout_of(home).put_bytes(data, MEDIA_LAYER_GZIP)
        with pytest.raises(StoreError, match="does not decompress"):
            unpacked.ensure(home, layout_of(home), junk, diff_id, "junk:1 layer 0")
        assert leftovers(home) == []


def test_a_gzip_layer_of_another_tool_unpacks_too(home: Home, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    tar = plain_tar(tree)
    # two members, as pigz writes them, at zlib's level
    half = len(tar) // 2
    data = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    blob = layout_of(home).put_bytes(data, MEDIA_LAYER_GZIP)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    target = unpacked.ensure(home, layout_of(home), blob, diff_id, "gz:1 layer 0")
    assert (target / "etc" / "motd").read_text() == "hello from a layer\n" * 2000


def test_an_unknown_media_type_is_refused(home: Home, tmp_path: Path) -> None:
    captured = layer.capture(layout_of(home), home.tmp, make_tree(tmp_path / "tree"))
    odd = Descriptor(
        "application/vnd.oci.image.layer.v1.tar+zstd",
        captured.descriptor.digest,
        captured.descriptor.size,
    )
    with pytest.raises(StoreError, match="not a tar layer"):
        layer.unpack(layout_of(home), odd, tmp_path / "out", "odd layer", captured.diff_id)
    assert not (tmp_path / "out").exists()


def children_reading(tree: Path) -> list[int]:
    """PIDs of our child processes whose argv names ``tree`` (a tar left blocked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and str(tree).encode() in argv:
            found.append(int(entry.name))
    return found


def test_a_tree_of_20000_sockets_is_captured_though_tar_warns_of_each(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tar writes "socket ignored" to stderr for each: far more than a pipe holds."""
    tree = make_tree(tmp_path / "tree")
    (tree / "run").mkdir()
    monkeypatch.chdir(tree / "run")  # short relative names: a socket path has 108 bytes
    for number in range(20_000):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"s{number}")  # the socket file stays after the socket is closed
    monkeypatch.chdir(tmp_path)
    result: list[layer.CapturedLayer | BaseException] = []

    def capture() -> None:
        try:
            result.append(layer.capture(layout_of(home), home.tmp, tree))
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=capture, daemon=True)
    worker.start()
    worker.join(timeout=60)  # it takes about a second
    if worker.is_alive():
        for pid in children_reading(tree):  # let the stuck capture end
            os.kill(pid, signal.SIGKILL)
        worker.join(timeout=30)
        pytest.fail("the capture hung: tar blocked writing to a full stderr pipe")
    [captured] = result
    assert isinstance(captured, layer.CapturedLayer), captured
    blob = layout_of(home).blob_path(captured.descriptor.digest).read_bytes()
    names = subprocess.run(
        ["tar", "--list", "--gzip"], input=blob, check=True, stdout=subprocess.PIPE
    ).stdout.decode()
    assert "./run/" in names.splitlines() and "s1" not in names and "./bin/tool" in names
    assert leftovers(home) == []


def test_a_capture_tar_fails_is_an_error_with_its_words_and_leaves_no_blob(
    home: Home, tmp_path: Path
) -> None:
    with pytest.raises(proc.CommandError, match="exit code 2") as caught:
        layer.capture(layout_of(home), home.tmp, tmp_path / "gone")
    assert "Cannot open: No such file or directory" in caught.value.output
    assert leftovers(home) == [] and list(layout_of(home).blobs.iterdir()) == []
