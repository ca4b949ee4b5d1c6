"""Each nspawn kiln starts gets a cgroup of its own: where it is, in each hierarchy systemd
uses, and that it is entered and removed for real."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from kiln import cgroups

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def write(tmp_path: Path, mountinfo: str, own: str) -> tuple[Path, Path]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "cgroup").write_text(own)
    return tmp_path / "mountinfo", tmp_path / "cgroup"


def test_a_cgroup_in_each_hierarchy_systemd_uses_below_kilns_own(tmp_path: Path) -> None:
    mountinfo, own = write(tmp_path, HYBRID, "9:name=systemd:/ci\n1:cpu:/\n0::/ci\n")
    assert cgroups.folders("machine-web", mountinfo, own) == [
        Path("/sys/fs/cgroup/systemd/ci/kiln/machine-web"),
        Path("/sys/fs/cgroup/unified/ci/kiln/machine-web"),
    ]
    mountinfo, own = write(tmp_path, PURE_V2, "0::/user.slice/session-1.scope\n")
    assert cgroups.folders("build-1", mountinfo, own) == [
        Path("/sys/fs/cgroup/user.slice/session-1.scope/kiln/build-1")
    ]
    mountinfo, own = write(tmp_path, "", "")
    assert cgroups.folders("x", mountinfo, own) == []


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x" * 200])
def test_a_name_that_is_not_one_folder_is_refused(name: str, tmp_path: Path) -> None:
    mountinfo, own = write(tmp_path, HYBRID, "0::/\n")
    with pytest.raises(ValueError):
        cgroups.folders(name, mountinfo, own)


def test_a_command_runs_in_its_own_cgroup_which_goes_after(tmp_path: Path) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    if not cgroups.folders(name):
        pytest.skip("this host has no cgroup hierarchy systemd uses")
    argv = cgroups.enter(name, ["cat", "/proc/self/cgroup"])
    assert argv[0] == "/bin/sh", "cgroups can be made here (root, a writable cgroupfs)"
    try:
        lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        mine = [line for line in lines.splitlines() if line.split(":")[1] in ("", "name=systemd")]
        assert mine and all(line.endswith(f"/kiln/{name}") for line in mine), lines
        (cgroups.folders(name)[0] / "payload").mkdir()  # what nspawn makes in it
    finally:
        cgroups.remove(name)
    assert not any(folder.exists() for folder in cgroups.folders(name))
