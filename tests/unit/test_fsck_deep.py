"""kiln fsck --deep: unpacked layers against the file inventories their bakes recorded.

A store laid out as a bake leaves it (a captured layer blob, its tree under layers/, the
image's config and manifest, its inventory referrer, the tag), on tmp_path.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from kiln.home import Home
from kiln.store import fsck, inventory, layer
from kiln.store.fsck import CatalogRows
from kiln.store.inventory import Node
from kiln.store.layout import MEDIA_CONFIG, MEDIA_MANIFEST
from tests.unit.conftest import layout_of


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def bake(home: Home, tmp_path: Path, sockets: int = 0) -> tuple[Path, str]:
    """Image app:1 of one layer; returns the layer's unpacked tree and the image's digest."""
    tree = tmp_path / "upper"
    write(tree / "etc/motd", "hello\n")
    for number in range(sockets):  # a step that left its sockets behind
        (tree / "srv").mkdir(exist_ok=True)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(tree / "srv" / f"s{number}"))
    write(tree / "usr/bin/tool", "#!/bin/sh\n", 0o755)
    write(tree / "usr/share/doc/app/README", "docs\n")
    (tree / "usr/bin/alias").symlink_to("tool")
    layout = layout_of(home)
    captured = layer.capture(layout, home.tmp, tree)
    unpacked = home.layers / captured.diff_id.split(":", 1)[1]
    tree.rename(unpacked)  # as a bake keeps its upper dir
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [captured.diff_id]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": layout.put_json(config, MEDIA_CONFIG).to_json(),
        "layers": [captured.descriptor.to_json()],
    }
    stored = layout.put_json(manifest, MEDIA_MANIFEST)
    entry, _top = inventory.attach(layout, home.layers, stored, None, "2026-01-01T00:00:00Z")
    layout.tag("app:1", stored, [entry])
    return unpacked, stored.digest


def check(home: Home, digest: str, deep: bool) -> fsck.Report:
    rows: CatalogRows = {"app:1": (True, digest)}
    return fsck.check(home, layout_of(home), lambda: dict(rows), deep=deep)


def test_an_intact_unpacked_layer_passes_the_deep_check(home: Home, tmp_path: Path) -> None:
    _tree, digest = bake(home, tmp_path)
    report = check(home, digest, deep=True)
    assert report.ok and report.faults == [], report.faults
    assert report.layers == 1 and report.to_json()["layers"] == 1


def test_the_deep_check_names_each_path_that_differs(home: Home, tmp_path: Path) -> None:
    tree, digest = bake(home, tmp_path)
    write(tree / "etc/motd", "hello from an intruder\n")  # content
    os.chown(tree / "usr/bin/tool", 1000, 1000)  # owner
    os.chmod(tree / "usr/bin/tool", 0o4755)  # mode (after chown, which drops setuid)
    write(tree / "etc/cron.d/evil", "* * * * * root sh\n")  # extra, in an extra folder
    (tree / "usr/bin/alias").unlink()
    (tree / "usr/bin/alias").symlink_to("/tmp/other")  # a link's target
    (tree / "usr/share/doc/app/README").unlink()
    (tree / "usr/share/doc/app").rmdir()  # missing, with what it held

    plain = check(home, digest, deep=False)
    assert plain.ok and plain.layers == 0, "plain fsck does not read unpacked trees"
    report = check(home, digest, deep=True)
    assert not report.ok
    where = f"app:1 layer 0 unpacked in {tree}: "
    assert report.faults == [
        where + "/etc/cron.d: extra (dir)",
        where + "/etc/motd: content",
        where + "/usr/bin/alias: target tool -> /tmp/other",
        where + "/usr/bin/tool: mode 0755 -> 4755, owner 0:0 -> 1000:1000",
        where + "/usr/share/doc/app: missing (dir)",
    ]
    assert any(str(tree) in note and "unpacks it again" in note for note in report.notes)


def test_sockets_are_not_held_against_a_layer_unpacked_elsewhere(
    home: Home, tmp_path: Path
) -> None:
    """tar leaves sockets out of the blob: the baking store's copy holds them, its inventory
    lists them, a copy unpacked from the blob does not."""
    tree, digest = bake(home, tmp_path, sockets=3)
    assert check(home, digest, deep=True).ok
    for number in range(3):
        (tree / "srv" / f"s{number}").unlink()  # as unpacking the blob makes it
    report = check(home, digest, deep=True)
    assert report.ok and report.layers == 1, report.faults


def test_differences_tell_type_changes_and_cover_what_is_below() -> None:
    recorded = {
        "/a": Node("dir", 0o755),
        "/a/b": Node("file", 0o644, size=1, sha256="x"),
        "/c": Node("file", 0o644, size=1, sha256="x"),
    }
    actual = {"/a": Node("file", 0o755, size=1, sha256="y"), "/c": Node("link", target="/a")}
    assert inventory.differences(recorded, actual) == [
        ("/a", "type dir -> file"),
        ("/c", "type file -> link"),
    ]
    assert inventory.differences(recorded, recorded) == []
