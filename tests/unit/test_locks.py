"""Ownership by flock: a live holder's entries are never abandoned, a dead one's always are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kiln import locks

HOLDER = """
import sys, time
from pathlib import Path
from kiln import locks
path, held = locks.owned_dir(Path(sys.argv[1]), "build-")
print(path, flush=True)
time.sleep(60)
"""


def test_a_live_holder_keeps_its_folder_and_a_killed_one_loses_it(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    folder = Path(child.stdout.readline().strip())
    try:
        assert folder.is_dir()
        assert not locks.is_abandoned(folder)
        assert [p for p, _held in locks.abandoned(tmp_path)] == []
    finally:
        child.kill()
        child.wait()
    found = list(locks.abandoned(tmp_path))
    assert [p for p, _held in found] == [folder]
    for _path, held in found:
        held.release()


def test_owned_files_and_odd_entries(tmp_path: Path) -> None:
    path, fd, held = locks.owned_file(tmp_path, "blob-")
    (tmp_path / "stray-link").symlink_to("/etc")
    (tmp_path / "stray-file").write_text("x")
    names = []
    for entry, other in locks.abandoned(tmp_path):
        names.append(entry.name)
        other.release()
    assert names == ["stray-file", "stray-link"], "the held temp file is not abandoned"
    held.release()

    os.close(fd)
    assert locks.is_abandoned(path)
    assert not locks.is_abandoned(tmp_path / "missing")


def test_locked_waits_for_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "x.lock"
    with locks.locked(lock):
        assert locks.hold(lock, wait=False) is None
    again = locks.hold(lock, wait=False)
    assert again is not None
    again.release()


def test_an_unheld_lock_file_is_removed_and_a_held_one_kept(tmp_path: Path) -> None:
    lock = tmp_path / "bake-x.lock"
    held = locks.hold(lock)
    assert held is not None
    assert not locks.remove_unheld(lock) and lock.exists()
    held.release()
    assert locks.remove_unheld(lock) and not lock.exists()
    again = locks.hold(lock)  # made afresh: the next holder has a file of its own
    assert again is not None and lock.exists()
    again.release()


def test_creation_lock_lives_beside_the_folder(tmp_path: Path) -> None:
    folder, held = locks.owned_dir(tmp_path / "builds", "web-")
    held.release()
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [folder.name]
    assert (tmp_path / ".builds.lock").is_file()
