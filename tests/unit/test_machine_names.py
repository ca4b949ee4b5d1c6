"""What kiln names on the host (systemd-nspawn machine names, cgroups, propagate folders) is
per KILN_HOME, fits systemd's limits, and gc removes this home's leftovers, never another
home's and never one in use."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import cgroups
from kiln.app.gc import collect_garbage
from kiln.app.workspace import opened
from kiln.home import Home
from kiln.machines import leftovers
from kiln.machines.folder import check_name
from kiln.sandbox import Boot, Sandbox, build_name, machine_cgroup, machine_name, of_home

LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
LONG = ["a" * 63, "a" * 45 + "-" + "b" * 17, "a" * 44 + "-x" * 9, "a" * 55, "a" * 56]


def nspawn_accepts(name: str) -> bool:
    """systemd's hostname_is_valid(), which systemd-nspawn --machine= applies."""
    return len(name) <= 64 and all(LABEL.fullmatch(label) for label in name.split("."))


def option(argv: list[str], flag: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{flag}=")]
    return value


def test_a_homes_id_is_its_resolved_path_s(tmp_path: Path) -> None:
    one = Home(tmp_path / "one")
    assert re.fullmatch(r"[0-9a-f]{8}", one.id)
    (tmp_path / "one").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "one")
    assert Home(tmp_path / "link").id == one.id, "a symlink to a home is that home"
    assert Home(tmp_path / "two").id != one.id, "a copy of a home elsewhere is another home"


def test_one_machine_name_in_two_homes_gives_two_names_on_the_host(tmp_path: Path) -> None:
    one, two = Home(tmp_path / "one").id, Home(tmp_path / "two").id
    boots = [Boot(tmp_path / "root", "web", home) for home in (one, two)]
    argvs = [boot.argv() for boot in boots]
    assert [option(argv, "--machine") for argv in argvs] == [f"{one}-web", f"{two}-web"]
    assert [option(argv, "--hostname") for argv in argvs] == ["web", "web"]
    assert all("--settings=false" in argv for argv in argvs), "no host .nspawn file applies"
    assert [boot.cgroup for boot in boots] == [f"machine-{one}-web", f"machine-{two}-web"]
    assert of_home(one, boots[0].cgroup) and not of_home(one, boots[1].cgroup)
    assert of_home(one, f"{one}-web") and not of_home(two, f"{one}-web")


@pytest.mark.parametrize("name", ["w", "web", "a-b-c", *LONG])
def test_every_machine_name_fits_nspawn_and_cgroups(name: str, tmp_path: Path) -> None:
    check_name(name)
    home = Home(tmp_path).id
    scoped = machine_name(home, name)
    assert nspawn_accepts(scoped) and scoped.startswith(f"{home}-"), scoped
    assert cgroups.NAME.fullmatch(machine_cgroup(home, name))
    assert of_home(home, scoped) and of_home(home, machine_cgroup(home, name))


def test_long_names_stay_apart(tmp_path: Path) -> None:
    home = Home(tmp_path).id
    names = LONG + [f"{'a' * 45}{i}" + "c" * 17 for i in range(10)]
    scoped = [machine_name(home, name) for name in names]
    assert len(set(scoped)) == len(names)
    assert machine_name(home, "a" * 55) == f"{home}-{'a' * 55}", "64 characters: kept whole"
    assert "." in machine_name(home, "a" * 56) and "." not in machine_name(home, "a" * 55)


def test_systemd_nspawn_takes_the_longest_names(tmp_path: Path) -> None:
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("no systemd-nspawn here")
    home = Home(tmp_path).id
    for name in [machine_name(home, long) for long in LONG] + [build_name(home)]:
        result = subprocess.run(
            ["systemd-nspawn", "--quiet", f"--machine={name}", f"--directory={tmp_path}/none"],
            capture_output=True,
            text=True,
        )
        assert "Invalid machine name" not in result.stderr, (name, result.stderr)


def test_a_build_command_is_named_after_its_home(tmp_path: Path) -> None:
    home = Home(tmp_path).id
    argv = Sandbox(tmp_path, home).argv(["true"])
    machine = option(argv, "--machine")
    assert re.fullmatch(rf"build-{home}-[0-9a-f]{{12}}", machine), machine
    assert option(argv, "--hostname") == "kiln-build" and "--settings=false" in argv
    assert option(Sandbox(tmp_path, home).argv(["true"], machine="x"), "--machine") == "x"


@pytest.fixture
def made() -> Iterator[list[str]]:
    """cgroups a test makes; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        cgroups.remove(name)


def make(name: str, made: list[str], age: float = 600.0) -> None:
    made.append(name)
    for folder in cgroups.folders(name):
        (folder / "payload").mkdir(parents=True)  # what nspawn makes in it
        then = time.time() - age
        os.utime(folder, (then, then))


def test_gc_removes_this_homes_leftovers_only(
    tmp_path: Path, made: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cgroups.folders("probe"):
        pytest.skip("this host has no cgroup hierarchy systemd uses")
    mine, other = Home(tmp_path / "mine"), Home(tmp_path / "other")
    mine.ensure()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILN_POLICY", raising=False)
    propagate = tmp_path / "propagate"
    monkeypatch.setattr(leftovers, "PROPAGATE", propagate)
    gone = [machine_cgroup(mine.id, "web"), build_name(mine.id)]
    stays = [machine_cgroup(other.id, "web"), build_name(other.id), "build-0123abcd"]
    busy, fresh = machine_cgroup(mine.id, "busy"), machine_cgroup(mine.id, "fresh")
    for name in gone + stays + [busy]:
        make(name, made)
    make(fresh, made, age=0)
    folders = {name: propagate / name for name in (f"{mine.id}-web", f"{other.id}-web")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        os.utime(folder, (time.time() - 600, time.time() - 600))
    sleeper = subprocess.Popen(cgroups.enter(busy, ["sleep", "60"]))
    try:
        while not cgroups.in_use(busy):
            time.sleep(0.01)
        with opened(mine) as workspace:
            dry = collect_garbage(workspace, dry_run=True).report
        listed = {item.path for item in dry.items if item.kind == "nspawn"}
        expected = {str(cgroups.folders(name)[0]) for name in gone}
        assert listed == expected | {str(folders[f"{mine.id}-web"])}
        assert all(cgroups.changed(name) is not None for name in gone), "a dry run removed"

        with opened(mine) as workspace:
            done = collect_garbage(workspace).report
        assert {item.path for item in done.items if item.kind == "nspawn"} == listed
        assert done.count("nspawn") == 3
        assert [cgroups.changed(name) for name in gone] == [None, None]
        assert all(cgroups.changed(name) is not None for name in stays), "another home's went"
        assert cgroups.in_use(busy) and cgroups.changed(fresh) is not None
        assert not folders[f"{mine.id}-web"].exists() and folders[f"{other.id}-web"].is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
