"""Convergence snapshots read a machine's root without ever leaving it."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.machines import converge


def test_snapshot_stays_inside_the_root_and_sees_changes(tmp_path: Path) -> None:
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    (sentinel / "secret").write_text("host data")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("hello")
    (root / "etc/escape").symlink_to(sentinel)  # absolute link: means the image's /…/outside
    os.mkfifo(root / "etc/pipe")  # must not hang the walk
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/x.log").write_text("skipped")
    skip = converge.Skip.for_machine(state=["/srv/data"])

    before = converge.snapshot(root, skip)
    assert set(before) == {"/etc", "/etc/motd", "/etc/escape", "/etc/pipe", "/var"}
    assert before["/etc/escape"][0].kind == "link"
    assert not any(path.startswith("/etc/escape/") for path in before)

    (root / "etc/motd").write_text("changed")
    (root / "etc/new").write_text("new")
    after = converge.snapshot(root, skip, before)
    changes = {c.path: c.change for c in converge.diff(before, after)}
    assert changes == {"/etc/motd": "modified", "/etc/new": "added"}
    assert (sentinel / "secret").read_text() == "host data"
    assert os.listdir(sentinel) == ["secret"]
