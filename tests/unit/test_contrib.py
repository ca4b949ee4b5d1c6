"""The systemd units in contrib/ are valid (systemd-analyze verify) and call kiln as its
command line is today: every command and flag they use exists."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kiln.cli.main import cli

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
INSTALLED = "/usr/local/bin/kiln"
UNITS = sorted(CONTRIB.glob("*.service")) + sorted(CONTRIB.glob("*.timer"))


LONG_RUNNING = {"kiln-worker"}  # services that run until stopped, with no timer


def test_every_service_has_its_timer() -> None:
    services = {p.stem for p in CONTRIB.glob("*.service")} - LONG_RUNNING
    timers = {p.stem for p in CONTRIB.glob("*.timer")}
    assert services == timers and {"kiln-refresh", "kiln-prove"} <= services


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run scripts/setup")
    kiln = Path(sys.executable).with_name("kiln")  # the virtualenv's entry point
    assert kiln.is_file(), kiln
    for unit in UNITS:  # verify checks that ExecStart's program exists: point it at ours
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(kiln)))
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def _invocations(text: str) -> list[list[str]]:
    """Each `kiln ...` the units run, as words ($VARIABLES left out)."""
    found = []
    for line in text.splitlines():
        if not line.startswith("ExecStart="):
            continue
        for match in re.finditer(re.escape(INSTALLED) + r"([^;|&']*)", line):
            words = [w for w in shlex.split(match.group(1)) if not w.startswith("$")]
            found.append(words)
    return found


def _defaults(unit: Path) -> list[list[str]]:
    """The arguments the unit's own Environment= lines give ($KILN_REFRESH_ARGS)."""
    found = []
    for line in unit.read_text().splitlines():
        match = re.match(r'Environment="KILN_REFRESH_ARGS=([^"]*)"', line)
        if match:
            found.append(["refresh", *shlex.split(match.group(1))])
    return found


@pytest.mark.parametrize("unit", sorted(CONTRIB.glob("*.service")), ids=lambda p: p.name)
def test_units_call_commands_and_flags_that_exist(unit: Path) -> None:
    calls = _invocations(unit.read_text())
    assert calls, f"{unit.name} runs no kiln command"
    for words in calls + _defaults(unit):
        command = cli.load_all().get(words[0])
        assert isinstance(command, click.Command), f"{unit.name}: no command kiln {words[0]}"
        flags = {flag for param in command.params for flag in getattr(param, "opts", [])}
        used = {w for w in words[1:] if w.startswith("--")}
        assert used <= flags, f"{unit.name}: kiln {words[0]} has no {sorted(used - flags)}"
