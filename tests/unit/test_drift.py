"""Drift on plain folders standing in for a machine's upper dir and its image's layers.

Each test lays out a stopped machine the way kiln run leaves one in KILN_HOME (its state
file, upper dir, the image's config in the OCI layout, the unpacked layers) and asks
kiln.machines.drift.scan about it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.errors import KilnError, StoreError
from kiln.home import Home
from kiln.layers import OPAQUE_XATTR, merge
from kiln.machines import drift, treehash
from kiln.machines.drift import Drift, scan
from kiln.machines.folder import Folder, Proc, State, save
from kiln.store import inventory
from kiln.store.layout import MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST, Layout

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="overlay whiteouts need mknod and trusted.* xattrs (root)"
)

OLD = 1_500_000_000_000_000_000
STATE_PATH = "/var/lib/app"


def whiteout_at(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


class Image:
    """Layers under home/layers/<hex> and an image manifest + config naming them."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.layout = Layout(home.oci)
        self.dirs: list[Path] = []
        self.digests: list[str] = []  # each image in turn: its layers so far

    def layer(self, fill: Callable[[Path], None]) -> Path:
        scratch = self.home.tmp / f"layer-{len(self.dirs)}"
        scratch.mkdir()
        fill(scratch)
        diff = hashlib.sha256(str(scratch).encode()).hexdigest()  # any unique name
        target = self.home.layers / diff
        scratch.rename(target)
        self.dirs.append(target)
        return target

    def commit(self, record: bool = True, labels: dict[str, str] | None = None) -> str:
        """An image of the layers so far; with ``record``, its inventory referrer too."""
        diff_ids = [f"sha256:{d.name}" for d in self.dirs]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Labels": labels
                or {
                    "org.kiln.runtime": json.dumps({"state": [STATE_PATH]}),
                    "org.kiln.seal": json.dumps([{"path": "/etc/ssh/ssh_host_*", "ok": True}]),
                }
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_desc = self.layout.put_json(config, MEDIA_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [{"mediaType": MEDIA_LAYER, "digest": d, "size": 0} for d in diff_ids],
        }
        stored = self.layout.put_json(manifest, MEDIA_MANIFEST)
        if record:
            parent = self.digests[-1] if self.digests else None
            entry, _top = inventory.attach(
                self.layout, self.home.layers, stored, parent, "2026-01-01T00:00:00Z"
            )
            self.layout.tag(f"app:{len(self.digests) + 1}", stored, [entry])
        self.digests.append(stored.digest)
        return stored.digest


def machine(home: Home, image: Image, volumes: dict[str, str] | None = None) -> Path:
    """A stopped machine 'm1' booted from the image's last commit; returns its upper dir."""
    folder = Folder.of(home, "m1")
    folder.upper.mkdir(parents=True)
    state = State(
        name="m1",
        image=f"app:{len(image.digests)}",
        digest=image.digests[-1],
        boot_id="another boot of the host",
        nspawn=Proc(1, 0),
        leader=Proc(1, 0),
        volumes=volumes or {},
        layers=[str(d) for d in image.dirs],
    )
    save(folder, state)
    return folder.upper


def base_tree(root: Path) -> None:
    write(root / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(root / "etc/motd", "hello\n")
    write(root / "etc/ssh/ssh_config", "Host *\n")
    write(root / "etc/hostname.d/keep", "k\n")
    write(root / "etc/nginx/nginx.conf", "worker_processes 1;\n")
    write(root / "etc/nginx/sites/default", "server {}\n")
    write(root / "etc/nginx/sites/other", "server {}\n")
    write(root / "usr/bin/tool", "#!/bin/sh\n", 0o755)
    (root / "usr/bin/alias").symlink_to("tool")
    write(root / "usr/share/doc/app/README", "docs\n")
    write(root / "usr/share/doc/app/NEWS", "news\n")
    write(root / f"{STATE_PATH}/data", "seed\n")
    write(root / "var/log/old.log", "")


@pytest.fixture
def image(home: Home) -> Image:
    built = Image(home)
    built.layer(base_tree)
    built.commit()
    return built


def by_path(drift: Drift) -> dict[str, tuple[str, str]]:
    return {c.path: (c.change, c.detail) for c in drift.changes}


def test_a_fresh_machine_and_an_equal_copy_up_are_no_drift(home: Home, image: Image) -> None:
    upper = machine(home, image)
    (upper / "etc").mkdir()
    write(upper / "etc/motd", "hello\n")  # copied up, content, mode and owner as before
    os.utime(upper / "etc/motd", ns=(OLD, OLD))
    (upper / "usr/bin").mkdir(parents=True)
    (upper / "usr/bin/alias").symlink_to("tool")  # a link re-made as it was
    drift = scan(home, "m1")
    assert drift.total == 0 and drift.changes == []
    assert not drift.running
    assert drift.to_json()["drifted"] is False
    assert drift.ignored == [STATE_PATH]


def test_added_changed_deleted_and_metadata_are_told_apart(home: Home, image: Image) -> None:
    upper = machine(home, image)
    write(upper / "etc/passwd", "root:x:0:0::/root:/bin/bash\n")  # content
    write(upper / "etc/motd", "hello\n", 0o600)  # mode only
    write(upper / "usr/bin/tool", "#!/bin/sh\n", 0o755)
    os.chown(upper / "usr/bin/tool", 1000, 1000)  # owner only
    (upper / "usr/bin/alias").symlink_to("/usr/bin/other")  # a link's target is content
    write(upper / "etc/new.conf", "x\n")  # added
    whiteout_at(upper / "etc/hostname.d")  # a folder deleted with what was in it
    write(upper / "usr/share/doc/app", "now a file\n")  # a folder became a file
    whiteout_at(upper / "etc/nginx/nginx.conf")  # deleted
    drift = scan(home, "m1")
    assert by_path(drift) == {
        "/etc/passwd": ("changed", "content"),
        "/etc/motd": ("metadata", "mode 0644 -> 0600"),
        "/usr/bin/tool": ("metadata", "owner 0:0 -> 1000:1000"),
        "/usr/bin/alias": ("changed", "target tool -> /usr/bin/other"),
        "/etc/new.conf": ("added", ""),
        "/etc/hostname.d": ("deleted", ""),
        "/usr/share/doc/app": ("changed", "type dir -> file"),
        "/etc/nginx/nginx.conf": ("deleted", ""),
    }
    data = drift.to_json()
    assert data["total"] == drift.total == 8
    assert {c["path"] for c in data["metadata"]} == {"/etc/motd", "/usr/bin/tool"}
    assert all(c["change"] != "metadata" for c in data["changes"])
    kinds = {c.path: c.kind for c in drift.changes}
    assert kinds["/etc/hostname.d"] == "dir" and kinds["/usr/bin/alias"] == "link"


def test_an_opaque_folder_deletes_what_it_does_not_hold_again(home: Home, image: Image) -> None:
    upper = machine(home, image)
    sites = upper / "etc/nginx/sites"
    write(sites / "default", "server {}\n")  # the same again: no drift
    write(sites / "mine", "server { listen 81; }\n")  # new
    os.setxattr(sites, OPAQUE_XATTR, b"y")  # rm -rf sites; mkdir sites, as overlayfs has it
    drift = scan(home, "m1")
    assert by_path(drift) == {
        "/etc/nginx/sites/other": ("deleted", ""),
        "/etc/nginx/sites/mine": ("added", ""),
    }


def test_the_image_is_seen_through_its_own_whiteouts(home: Home, image: Image) -> None:
    """A path the top layer deleted is not in the image: the machine's is added. A folder
    the top layer made opaque hides the base's files under it."""

    def top(root: Path) -> None:
        (root / "etc").mkdir()
        whiteout_at(root / "etc/motd")
        (root / "usr/share/doc").mkdir(parents=True)
        write(root / "usr/share/doc/app/ONLY", "only\n")
        os.setxattr(root / "usr/share/doc/app", OPAQUE_XATTR, b"y")

    image.layer(top)
    image.commit()
    upper = machine(home, image)
    write(upper / "etc/motd", "hello\n")
    write(upper / "usr/share/doc/app/README", "docs\n")  # the base's, but hidden by the top
    whiteout_at(upper / "usr/share/doc/app/NEWS")  # nothing to delete: the image has none
    drift = scan(home, "m1")
    assert by_path(drift) == {
        "/etc/motd": ("added", ""),
        "/usr/share/doc/app/README": ("added", ""),
    }


def test_state_paths_volumes_and_volatile_paths_are_left_out(home: Home, image: Image) -> None:
    upper = machine(home, image, volumes={"/srv/data": "/somewhere/on/the/host"})
    write(upper / f"{STATE_PATH}/data", "changed by the app\n")  # the contract's state path
    write(upper / "srv/data/db", "x\n")  # a volume given at kiln run (/srv: its mount point)
    write(upper / "var/log/app.log", "line\n")  # logs
    write(upper / "var/log/old.log", "more\n")
    write(upper / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")  # identity
    write(upper / "etc/ssh/ssh_host_ed25519_key", "key\n")  # a seal path from the labels
    write(upper / "tmp/scratch", "x\n")
    write(upper / "var/cache/apt/pkgcache.bin", "x\n")
    whiteout_at(upper / "var/log/gone.log")
    write(upper / "etc/motd", "hello again\n")  # the one real change
    drift = scan(home, "m1")
    assert by_path(drift) == {"/etc/motd": ("changed", "content")}
    assert drift.ignored == ["/srv/data", STATE_PATH]


def test_a_planted_symlink_is_reported_and_never_followed(
    home: Home, image: Image, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = write(outside / "sentinel", "host secret\n")
    write(outside / "passwd", "root:x:0:0::/root:/bin/sh\n")  # what etc/passwd holds
    before = sentinel.read_bytes()
    os.utime(sentinel, ns=(OLD, OLD))
    control = write(outside / "control", "x\n")
    os.utime(control, ns=(OLD, OLD))
    control.read_bytes()
    atime_works = os.stat(control).st_atime_ns != OLD  # relatime: an old atime moves on read

    upper = machine(home, image)
    (upper / "etc").mkdir()
    (upper / "etc/evil").symlink_to(sentinel)  # absolute, out of the tree
    (upper / "etc/passwd").symlink_to(outside / "passwd")  # a file made a link outward
    (upper / "etc/nginx").symlink_to(outside)  # a folder made a link outward
    for deep in (False, True):
        drift = scan(home, "m1", deep=deep)
        assert by_path(drift) == {
            "/etc/evil": ("added", ""),
            "/etc/passwd": ("changed", "type file -> link"),
            "/etc/nginx": ("changed", "type dir -> link"),
        }
        assert {c.kind for c in drift.changes} == {"link"}
    if atime_works:
        assert os.stat(sentinel).st_atime_ns == OLD, "the sentinel was read"
    assert sentinel.read_bytes() == before
    assert sorted(p.name for p in outside.iterdir()) == ["control", "passwd", "sentinel"]


def tamper(layer: Path) -> None:
    """Edit an unpacked layer the way a person on the host could, behind the overlay."""
    write(layer / "etc/motd", "edited in the store\n")
    os.unlink(layer / "etc/nginx/sites/other")
    write(layer / "etc/planted", "x\n")


def app_layer(root: Path) -> None:
    write(root / "etc/app.conf", "a=1\n")


def test_deep_finds_a_layer_changed_behind_the_overlay(home: Home, image: Image) -> None:
    image.layer(app_layer)
    image.commit()
    upper = machine(home, image)
    write(upper / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")  # an equal copy-up
    tamper(image.dirs[0])
    os.chmod(image.dirs[1] / "etc/app.conf", 0o600)
    assert scan(home, "m1").total == 0  # the upper dir alone holds nothing new
    deep = scan(home, "m1", deep=True)
    assert {c.path: (c.change, c.detail, c.layer) for c in deep.changes} == {
        "/etc/motd": ("changed", "content", 0),
        "/etc/nginx/sites/other": ("deleted", "", 0),
        "/etc/planted": ("added", "", 0),
        "/etc/app.conf": ("metadata", "mode 0644 -> 0600", 1),
    }
    assert deep.deep is not None and [layer.inventory for layer in deep.deep] == [True, True]
    assert deep.to_json()["deep"][1]["diff_id"] == f"sha256:{image.dirs[1].name}"


def test_deep_compares_a_copy_up_with_the_inventory_not_the_edited_layer(
    home: Home, image: Image
) -> None:
    upper = machine(home, image)
    write(upper / "etc/motd", "hello\n")  # what the image held
    write(image.dirs[0] / "etc/motd", "edited in the store\n")
    assert by_path(scan(home, "m1")) == {"/etc/motd": ("changed", "content")}
    assert scan(home, "m1", deep=True).total == 0


def test_deep_without_inventories_says_so_and_does_the_fast_check(home: Home) -> None:
    old = Image(home)
    old.layer(base_tree)
    old.commit(record=False)  # baked before kiln recorded inventories
    upper = machine(home, old)
    write(upper / "etc/motd", "changed\n")
    tamper(old.dirs[0])
    deep = scan(home, "m1", deep=True)
    assert by_path(deep) == {"/etc/motd": ("changed", "content")}
    assert deep.deep is not None and [layer.inventory for layer in deep.deep] == [False]
    assert "before kiln recorded file inventories" in " ".join(deep.notes)


def test_deep_checks_the_layers_that_have_an_inventory(home: Home) -> None:
    """A child baked on a parent from before inventories: the parent's layer is taken as
    it is on disk, the child's is checked."""
    mixed = Image(home)
    mixed.layer(base_tree)
    mixed.commit(record=False)
    mixed.layer(app_layer)
    mixed.commit()
    machine(home, mixed)
    tamper(mixed.dirs[0])
    write(mixed.dirs[1] / "etc/app.conf", "a=2\n")
    deep = scan(home, "m1", deep=True)
    assert by_path(deep) == {"/etc/app.conf": ("changed", "content")}
    assert deep.deep is not None and [layer.inventory for layer in deep.deep] == [False, True]
    assert "layer 0 of app:2 has no file inventory" in " ".join(deep.notes)


def test_an_inventory_is_the_same_bytes_for_the_same_layer(home: Home, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    base_tree(tree)
    whiteout_at(tree / "etc/gone")
    os.setxattr(tree / "usr/share", OPAQUE_XATTR, b"y")
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool2")
    layout = Layout(home.oci)
    first = inventory.record(layout, tree, "sha256:" + "0" * 64)
    for path in tree.rglob("*"):
        os.utime(path, ns=(OLD, OLD), follow_symlinks=False)  # times are not recorded
    assert inventory.record(layout, tree, "sha256:" + "0" * 64) == first
    nodes = inventory.load(layout, first, "test")
    assert nodes["/etc/gone"].kind == "whiteout"
    assert nodes["/usr/share"].opaque
    assert nodes["/usr/bin/alias"] == inventory.Node("link", 0o777, 0, 0, target="tool")
    tool = nodes["/usr/bin/tool2"]
    assert (tool.kind, tool.mode, tool.size) == ("file", 0o755, 10)
    assert tool.sha256 == hashlib.sha256(b"#!/bin/sh\n").hexdigest()


def test_a_name_that_is_not_utf8_is_recorded_as_its_bytes(home: Home, tmp_path: Path) -> None:
    """A package may ship a file whose name is no UTF-8: the inventory keeps its bytes and
    reads them back as the file system names it, instead of failing the bake."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    name = os.fsdecode(b"caf\xe9.conf")
    (tree / "etc" / name).write_text("x\n")
    layout = Layout(home.oci)
    recorded = inventory.record(layout, tree, "sha256:" + "0" * 64)
    nodes = inventory.load(layout, recorded, "test")
    assert sorted(nodes) == ["/etc", f"/etc/{name}"]
    assert os.fsencode(f"/etc/{name}") == b"/etc/caf\xe9.conf"
    assert inventory.record(layout, tree, "sha256:" + "0" * 64) == recorded


def test_a_corrupt_inventory_is_refused(home: Home, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    base_tree(tree)
    layout = Layout(home.oci)
    blob = inventory.record(layout, tree, "sha256:" + "0" * 64)
    path = layout.blob_path(blob.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        inventory.load(layout, blob, "app:1 layer 0")


def test_merge_follows_overlayfs() -> None:
    def node(kind: str, opaque: bool = False) -> inventory.Node:
        return inventory.Node(kind, opaque=opaque)

    bottom = {
        "/a": node("dir"),
        "/a/x": node("file"),
        "/a/y": node("dir"),
        "/a/y/z": node("file"),
        "/b": node("dir"),
        "/b/c": node("file"),
    }
    top = {
        "/a": node("dir"),
        "/a/y": node("whiteout"),
        "/b": node("dir", opaque=True),
        "/b/d": node("file"),
    }
    merged = merge([bottom, top])
    assert {path: index for path, (index, _node) in merged.items()} == {
        "/a": 1,
        "/a/x": 0,
        "/b": 1,
        "/b/d": 1,
    }
    again = merge([bottom, {"/a": node("file")}])
    assert sorted(again) == ["/a", "/b", "/b/c"]


# a newline, a tab, a letter of two bytes, and a byte that is no UTF-8 (0xe9 alone, which
# Python names by a lone surrogate)
ODD = "etc/odd\tnamé\n\udce9"


def odd_and_large(root: Path) -> None:
    write(root / ODD, "first\n")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/big.so").write_bytes(bytes(range(256)) * 12_000)  # read in chunks


def deep_changes(home: Home) -> dict[str, tuple[str, str]]:
    return by_path(scan(home, "m1", deep=True))


def test_deep_hashes_odd_names_and_large_files_in_its_children_or_threads(home: Home) -> None:
    """The files go to forked children by name (NUL-ended, as bytes): a name holding a
    newline, and a file larger than a read, come back right; a process running threads
    hashes them on threads and finds the same."""
    built = Image(home)
    built.layer(base_tree)
    built.layer(odd_and_large)
    built.commit()
    machine(home, built)
    assert deep_changes(home) == {}
    odd = built.dirs[1] / ODD
    odd.write_text("other\n")  # the same size
    with open(built.dirs[1] / "usr/lib/big.so", "r+b") as big:
        big.seek(-1, os.SEEK_END)
        big.write(b"\x00")  # was 0xff
    expected = {
        "/" + ODD: ("changed", "content"),
        "/usr/lib/big.so": ("changed", "content"),
    }
    assert deep_changes(home) == expected
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert deep_changes(home) == expected
    finally:
        release.set()
        other.join()


def hashed_ahead(tree: Path, files: list[treehash.File]) -> dict[tuple[int, str], str]:
    trees = treehash.Trees([tree])
    try:
        hashing = treehash.Hashing(trees)
        try:
            hashing.send(files)
            return hashing.result()
        finally:
            hashing.stop()
    finally:
        trees.close()


def test_hashing_ahead_leaves_out_what_is_gone_and_raises_what_a_child_met(
    tmp_path: Path,
) -> None:
    """A file gone since it was listed is left out of what the children hashed ahead (the
    caller asks again for what it needs, and that raises); any other error a child meets
    is raised here. No child is left behind either way."""
    tree = tmp_path / "tree"
    write(tree / "etc/here", "x\n")
    (tree / "etc/loop").symlink_to("loop")
    files = [(0, "/etc/here", 2), (0, "/etc/gone", 2), (0, "/gone/x", 2)]
    assert hashed_ahead(tree, files) == {(0, "/etc/here"): hashlib.sha256(b"x\n").hexdigest()}
    trees = treehash.Trees([tree])
    try:
        with pytest.raises(FileNotFoundError):
            trees.sha256s(files)
    finally:
        trees.close()
    with pytest.raises(KilnError, match="loop"):
        hashed_ahead(tree, [(0, "/etc/here", 2), (0, "/etc/loop/x", 2)])
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_an_inventory_with_two_entries_on_a_line_is_refused(home: Home) -> None:
    lines = [
        b'{"diff_id":"sha256:0","inventory":1}',
        b'{"path":"/a","type":"dir"},{"path":"/b","type":"dir"}',
    ]
    data = gzip.compress(b"\n".join(lines) + b"\n")
    with pytest.raises(StoreError, match="damaged"):
        inventory.decode(data, "test")
    fine = gzip.compress(b"\n".join([lines[0], b'{"path":"/a","type":"dir"}']) + b"\n")
    assert inventory.decode(fine, "test") == ("sha256:0", {"/a": inventory.Node("dir")})
    assert inventory.decode(gzip.compress(lines[0] + b"\n"), "test") == ("sha256:0", {})


def test_deep_sends_a_large_tree_to_be_hashed_in_batches(home: Home) -> None:
    def many(root: Path) -> None:
        for n in range(3 * drift.BATCH):
            write(root / f"usr/share/many/{n // 100}/{n}", f"{n:04d}\n")

    built = Image(home)
    built.layer(many)
    built.commit()
    machine(home, built)
    assert deep_changes(home) == {}
    last = 3 * drift.BATCH - 1
    write(built.dirs[0] / f"usr/share/many/{last // 100}/{last}", "zzzz\n")  # the same size
    write(built.dirs[0] / "usr/share/many/0/0", "X\n")
    assert deep_changes(home) == {
        f"/usr/share/many/{last // 100}/{last}": ("changed", "content"),
        "/usr/share/many/0/0": ("changed", "content"),
    }
