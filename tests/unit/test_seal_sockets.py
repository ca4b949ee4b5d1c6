"""A socket a step leaves in a new layer is removed before capture: tar never puts one in
the blob, so left in place the baking store's unpacked layer would differ from every other
store's (and from what kiln fsck --deep reads back). Never through a symlink."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from kiln.bake.seal import drop_sockets


def bind(folder: Path, name: str) -> None:
    here = os.getcwd()
    os.chdir(folder)  # a short relative name: a socket path has 108 bytes at most
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(name)  # the socket file stays after the socket is closed
    finally:
        os.chdir(here)


def test_sockets_go_and_nothing_else_does(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    bind(outside, "sentinel.sock")  # reached only through a symlink planted in the layer
    layer = tmp_path / "upper"
    (layer / "srv" / "deep").mkdir(parents=True)
    bind(layer / "srv", "a.sock")
    bind(layer / "srv" / "deep", "b.sock")
    (layer / "srv" / "file").write_text("kept")
    os.mkfifo(layer / "srv" / "fifo")
    (layer / "srv" / "escape").symlink_to(outside)
    assert drop_sockets(layer) == 2
    left = sorted(str(p.relative_to(layer)) for p in layer.rglob("*"))
    assert left == ["srv", "srv/deep", "srv/escape", "srv/fifo", "srv/file"]
    assert stat.S_ISSOCK((outside / "sentinel.sock").lstat().st_mode)


def test_a_layer_without_sockets_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hi")
    before = (tmp_path / "etc").stat().st_mtime_ns
    assert drop_sockets(tmp_path) == 0
    assert (tmp_path / "etc").stat().st_mtime_ns == before
