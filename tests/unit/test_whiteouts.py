"""Whiteouts in overlay form and OCI form, and layers captured to / unpacked from tar blobs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from kiln import layers
from kiln.store import layer
from kiln.store.layout import MEDIA_LAYER_GZIP, Layout

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="overlay whiteouts need mknod and trusted.* xattrs (root)"
)

OPAQUE = layers.OPAQUE_XATTR
OLD = 1_500_000_000_123_456_789  # a fixed past mtime (ns) that any change would move


def whiteout_at(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def make_opaque(path: Path) -> None:
    os.setxattr(path, OPAQUE, b"y")


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def build_upper(root: Path) -> Path:
    """An overlay upper dir: two deletions, an opaque folder that a lower has, a new one."""
    (root / "etc" / "nginx").mkdir(parents=True)
    (root / "etc" / "nginx" / "nginx.conf").write_text("worker_processes 1;\n")
    whiteout_at(root / "etc" / "nginx" / "sites-enabled")
    whiteout_at(root / "etc" / "motd")
    (root / "var" / "cache" / "apt").mkdir(parents=True)
    (root / "var" / "cache" / "apt" / "keep").write_text("")
    make_opaque(root / "var" / "cache")
    (root / "srv" / "fresh").mkdir(parents=True)
    make_opaque(root / "srv" / "fresh")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    (root / "usr" / "bin" / "alias").symlink_to("tool")
    os.chown(root / "etc" / "nginx" / "nginx.conf", 1234, 5678)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(OLD, OLD), follow_symlinks=False)
    os.utime(root, ns=(OLD, OLD))
    return root


def lower_for(tmp_path: Path) -> Path:
    """A parent layer that has /var/cache (so the opaque marker there matters) but no /srv."""
    lower = tmp_path / "lower"
    (lower / "var" / "cache" / "old").mkdir(parents=True)
    return lower


Snapshot = dict[str, tuple[object, ...]]


def snapshot(root: Path) -> Snapshot:
    """Everything about a tree that a conversion must keep.

    A whiteout device's own timestamps are not kept (it is re-created); its parent's are.
    """
    out: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        perms = stat.S_IMODE(st.st_mode)
        owner = (st.st_uid, st.st_gid)
        if stat.S_ISCHR(st.st_mode):
            out[rel] = ("chr", st.st_rdev, perms, owner)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", perms, owner, st.st_mtime_ns, is_opaque(path))
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), owner, st.st_mtime_ns)
        else:
            out[rel] = ("file", perms, owner, st.st_mtime_ns, path.read_bytes())
    return out


# --- whiteout ---


def test_scan_overlay_finds_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    upper = build_upper(tmp_path / "upper")
    found = layers.scan_overlay(upper)
    assert sorted(found.deleted) == ["etc/motd", "etc/nginx/sites-enabled"]
    assert sorted(found.opaque) == ["srv/fresh", "var/cache"]


def test_scan_overlay_ignores_other_devices_and_sees_an_opaque_root(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    root.mkdir()
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / "file").write_text("")
    make_opaque(root)
    found = layers.scan_overlay(root)
    assert found.deleted == []
    assert found.opaque == [""]


def test_overlay_to_oci_writes_markers_and_keeps_mtimes(tmp_path: Path) -> None:
    upper = build_upper(tmp_path / "upper")
    before = snapshot(upper)
    found = layers.scan_overlay(upper)
    layers.overlay_to_oci(upper, found)

    assert not (upper / "etc" / "motd").exists()
    assert not (upper / "etc" / "nginx" / "sites-enabled").exists()
    for marker in [
        upper / "etc" / ".wh.motd",
        upper / "etc" / "nginx" / ".wh.sites-enabled",
        upper / "var" / "cache" / ".wh..wh..opq",
        upper / "srv" / "fresh" / ".wh..wh..opq",
    ]:
        st = os.lstat(marker)
        assert stat.S_ISREG(st.st_mode), marker
        assert st.st_size == 0
        assert st.st_mtime_ns == OLD, marker
    assert not any(stat.S_ISCHR(os.lstat(p).st_mode) for p in upper.rglob("*"))
    after = snapshot(upper)
    for folder in ["etc", "etc/nginx", "var/cache", "srv/fresh"]:
        assert after[folder][3] == before[folder][3] == OLD, folder


def test_oci_to_overlay_restores_the_original(tmp_path: Path) -> None:
    upper = build_upper(tmp_path / "upper")
    before = snapshot(upper)
    found = layers.scan_overlay(upper)
    layers.overlay_to_oci(upper, found)
    assert snapshot(upper) != before
    layers.oci_to_overlay(upper, found)
    assert snapshot(upper) == before
    assert os.lstat(upper / "etc" / "motd").st_rdev == os.makedev(0, 0)


def test_scan_oci_reads_markers_back(tmp_path: Path) -> None:
    upper = build_upper(tmp_path / "upper")
    found = layers.scan_overlay(upper)
    layers.overlay_to_oci(upper, found)
    again = layers.scan_oci(upper)
    assert sorted(again.deleted) == sorted(found.deleted)
    assert sorted(again.opaque) == sorted(found.opaque)


# --- layer capture and unpack ---


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    store = Layout(tmp_path / "oci")
    store.init()
    return store


def tar_bytes(layout: Layout, digest: str) -> bytes:
    """The tar stream a (gzip) layer blob holds."""
    return gzip.decompress(layout.blob_path(digest).read_bytes())


def members(layout: Layout, digest: str) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(layout, digest))) as archive:
        return archive.getmembers()


def test_whether_a_lower_has_a_folder_is_asked_inside_that_layer(
    tmp_path: Path, layout: Layout
) -> None:
    """A lower layer's /srv is a symlink to a host folder that has fresh/: read on the host
    it would keep srv/fresh's opaque marker; inside the layer, /srv leads nowhere."""
    outside = tmp_path / "outside"  # the sentinel: stands untouched
    (outside / "fresh").mkdir(parents=True)
    lower = lower_for(tmp_path)
    (lower / "srv").symlink_to(outside)
    (lower / "usr" / "lib").mkdir(parents=True)
    (lower / "lib").symlink_to("usr/lib")  # a link inside the layer is followed there
    upper = build_upper(tmp_path / "upper")
    (upper / "lib" / "kept").mkdir(parents=True)
    make_opaque(upper / "lib" / "kept")
    (lower / "usr" / "lib" / "kept").mkdir()
    before = sorted(p.name for p in outside.rglob("*"))
    captured = layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower])
    names = [m.name.removeprefix("./") for m in members(layout, captured.descriptor.digest)]
    assert "srv/fresh/.wh..wh..opq" not in names
    assert "lib/kept/.wh..wh..opq" in names
    assert sorted(p.name for p in outside.rglob("*")) == before


def test_capture_writes_an_oci_layer_tar(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    captured = layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower_for(tmp_path)])
    descriptor = captured.descriptor
    blob = layout.blob_path(descriptor.digest).read_bytes()
    assert descriptor.media_type == MEDIA_LAYER_GZIP
    assert descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert descriptor.size == len(blob)
    tar = tar_bytes(layout, descriptor.digest)
    assert captured.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()

    entries = members(layout, descriptor.digest)
    names = [m.name.removeprefix("./") for m in entries]
    assert "etc/.wh.motd" in names
    assert "etc/nginx/.wh.sites-enabled" in names
    assert "var/cache/.wh..wh..opq" in names  # the lower has var/cache
    assert "srv/fresh/.wh..wh..opq" not in names  # a new folder hides nothing
    assert "etc/motd" not in names
    assert not any(m.ischr() or m.isblk() for m in entries)
    marker = next(m for m in entries if m.name.endswith(".wh.motd"))
    assert marker.isreg()
    assert marker.size == 0
    assert all(not m.name.startswith("/") and ".." not in m.name.split("/") for m in entries)
    # depth first, names sorted within each folder
    assert names == sorted(names, key=lambda name: name.split("/"))
    # numeric owners only
    assert all(m.uname == "" and m.gname == "" for m in entries)
    conf = next(m for m in entries if m.name.endswith("nginx.conf"))
    assert (conf.uid, conf.gid) == (1234, 5678)
    assert int(conf.mtime) == OLD // 10**9  # pax keeps the fraction too
    link = next(m for m in entries if m.name.endswith("bin/alias"))
    assert link.issym()
    assert link.linkname == "tool"
    tool = next(m for m in entries if m.name.endswith("bin/tool"))
    assert tool.mode & 0o777 == 0o755


def test_capture_leaves_the_source_in_overlay_form(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    before = snapshot(upper)
    layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower_for(tmp_path)])
    assert snapshot(upper) == before
    assert not [p for p in upper.rglob(".wh.*")]
    # the temp blob moved into the store
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []


def test_capture_is_reproducible(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    lower = lower_for(tmp_path)
    first = layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower])
    second = layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower])
    assert first.descriptor == second.descriptor
    # a second tree built the same way, at another path and later, gives the same bytes
    other = build_upper(tmp_path / "elsewhere" / "upper")
    third = layer.capture(layout, tmp_path / "tmp", other, lowers=[lower])
    assert third.descriptor == first.descriptor
    assert len(list(layout.blobs.iterdir())) == 1


def test_capture_changes_with_content(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    first = layer.capture(layout, tmp_path / "tmp", upper)
    conf = upper / "etc" / "nginx" / "nginx.conf"
    conf.write_text("worker_processes 2;\n")
    os.utime(conf, ns=(OLD, OLD))
    second = layer.capture(layout, tmp_path / "tmp", upper)
    assert second.descriptor.digest != first.descriptor.digest


def test_source_date_epoch_clamps_mtimes(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    os.utime(upper / "usr" / "bin" / "tool", (2_000_000_000, 2_000_000_000))
    captured = layer.capture(layout, tmp_path / "tmp", upper, source_date_epoch=1_700_000_000)
    entries = {m.name.removeprefix("./"): m for m in members(layout, captured.descriptor.digest)}
    assert entries["usr/bin/tool"].mtime == 1_700_000_000
    assert int(entries["etc/nginx/nginx.conf"].mtime) == OLD // 10**9


def test_unpack_gives_back_the_overlay_form(tmp_path: Path, layout: Layout) -> None:
    upper = build_upper(tmp_path / "upper")
    lower = lower_for(tmp_path)
    captured = layer.capture(layout, tmp_path / "tmp", upper, lowers=[lower])
    dest = tmp_path / "unpacked"
    layer.unpack(layout, captured.descriptor, dest, "the test layer")

    expected = snapshot(upper)
    # an opaque marker on a folder no lower has is dropped at capture: it hides nothing
    kind, perms, owner, mtime, _opaque = expected["srv/fresh"]
    expected["srv/fresh"] = (kind, perms, owner, mtime, False)
    assert snapshot(dest) == expected
    assert not [p for p in dest.rglob(".wh.*")]
    assert is_opaque(dest / "var" / "cache")
    assert os.lstat(dest / "etc" / "motd").st_rdev == os.makedev(0, 0)

    # and the unpacked layer captures to the very same blob
    again = layer.capture(layout, tmp_path / "tmp", dest, lowers=[lower])
    assert again.descriptor == captured.descriptor
