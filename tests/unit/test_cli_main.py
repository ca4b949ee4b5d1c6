"""What reaches kiln's main(): an internal error is one line and a traceback file (exit
70, or the traceback itself with --debug); a mistyped command names the nearest one."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

# A bug, as a command would meet one: an exception kiln does not expect, raised from kiln's
# own code path (an int too large for a catalog column raises OverflowError like this).
BUG = """
import sys
from kiln.cli.main import cli, main

@cli.command("explode")
def explode() -> None:
    raise OverflowError("Python int too large to convert to SQLite INTEGER\\nsecond line")

main()
"""


def kiln(
    home: Path, *args: str, script: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "KILN_DEBUG")}
    environ.update(KILN_HOME=str(home), COLUMNS="300", **env)
    argv = [sys.executable, "-c", script] if script else [sys.executable, "-m", "kiln.cli.main"]
    return subprocess.run(
        [*argv, *args], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_an_internal_error_is_one_line_and_a_private_traceback_file(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    result = kiln(tmp_path, "explode", script=BUG)
    assert result.returncode == 70, result.stderr
    (line,) = result.stderr.splitlines()
    found = re.fullmatch(
        r"internal error in kiln \S+: OverflowError: Python int too large to convert to "
        r"SQLite INTEGER second line; traceback in (\S+)",
        line,
    )
    assert found, line
    path = Path(found.group(1))
    assert path.parent == tmp_path / "tmp"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert ", in explode\nOverflowError: " in text and "Traceback" not in result.stderr


def test_without_a_kiln_home_the_traceback_goes_to_the_temporary_folder(tmp_path: Path) -> None:
    result = kiln(tmp_path / "no-home", "explode", script=BUG, TMPDIR=str(tmp_path))
    assert result.returncode == 70
    assert result.stderr.rstrip().endswith(".txt")
    path = Path(result.stderr.rsplit("traceback in ", 1)[1].strip())
    assert path.parent == tmp_path and "OverflowError" in path.read_text()
    assert not (tmp_path / "no-home").exists()


@pytest.mark.parametrize(
    ("args", "env"), [(("--debug", "explode"), {}), (("explode",), {"KILN_DEBUG": "1"})]
)
def test_debug_shows_the_traceback(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = kiln(tmp_path, *args, script=BUG, **env)
    assert result.returncode == 70
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("second line")
    assert not (tmp_path / "tmp").exists() or not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("promot",), "no such command 'promot' (did you mean promote?)"),
        (("imagse",), "no such command 'imagse' (did you mean images?)"),
        (("key", "genrate"), "no such command 'genrate' (did you mean generate?)"),
        (("catalog", "upgrad"), "no such command 'upgrad' (did you mean upgrade?)"),
        (("zzzz",), "no such command 'zzzz'"),
    ],
)
def test_a_mistyped_command_names_the_nearest_one(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    result = kiln(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"Error: {said}"
    assert "Did you mean" not in result.stderr


def test_each_command_is_registered_by_the_module_the_lazy_map_names() -> None:
    """kiln imports a command's module only when the command is asked for: the map says
    which module registers each name, and every module registers exactly its names."""
    import click

    from kiln.cli.groups import LazyGroup
    from kiln.cli.main import COMMANDS

    by_module: dict[str, set[str]] = {}
    for name, module in COMMANDS.items():
        by_module.setdefault(module, set()).add(name)
    for module, names in by_module.items():
        group = LazyGroup(name="probe", modules={})
        __import__(module, fromlist=["register"]).register(group)
        assert set(group.commands) == names, module
    everything = LazyGroup(modules=COMMANDS).load_all()
    assert set(everything) == set(COMMANDS)
    assert all(isinstance(command, click.Command) for command in everything.values())


def test_a_command_imports_only_its_own_module() -> None:
    """kiln ps does not import what the bake needs (kiln.cli.build and kiln.bake)."""
    script = (
        "import sys\nfrom kiln.cli.main import cli\n"
        "cli.get_command(None, 'ps')\n"
        "print(sorted(m for m in sys.modules if m in ('kiln.cli.build', 'kiln.bake.build')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
