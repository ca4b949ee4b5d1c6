"""Long work is not silent: stage lines with times when stderr is a log, and -v streams
each step's own output live, labelled with its recipe and step."""

from __future__ import annotations

import re
import select
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import Kiln

MARKER = "kiln-progress-marker"


def slow_recipe(folder: Path, name: str) -> Path:
    recipe = folder / f"{name}.toml"
    recipe.write_text(
        f'[image]\nname = "{name}"\nparent = "tiny"\n\n'
        f'[[steps]]\nrun = "echo {MARKER}; sleep 5; echo done"\nshell = ["/bin/sh", "-c"]\n'
    )
    return recipe


def test_verbose_streams_a_steps_output_before_the_step_ends(baked: Kiln, tmp_path: Path) -> None:
    recipe = slow_recipe(tmp_path, "chatty")
    child = subprocess.Popen(
        baked.argv("bake", "-v", "--no-cache", str(recipe)),
        env=baked.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stderr is not None
    seen: list[tuple[float, str]] = []
    buffer = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([child.stderr], [], [], 1.0)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            chunk = child.stderr.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            seen += [(time.monotonic(), line.decode()) for line in lines]
            if any(MARKER in line for _t, line in seen):
                marker_seen = time.monotonic()
                running = child.poll() is None
                break
        else:
            raise AssertionError(f"no {MARKER} line within 120 s: {seen}")
        rest, _err = child.communicate(timeout=120)
        finished = time.monotonic()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, seen
    marker = [line for _t, line in seen if MARKER in line]
    assert marker == [f"chatty steps[0] | {MARKER}"]
    assert running, "the step's line came only after kiln exited"
    assert finished - marker_seen > 3, "the line came at the end, not as the step printed it"
    assert "baked chatty:" in rest.decode()


def test_a_bake_without_a_terminal_prints_each_stage_with_its_time(
    baked: Kiln, tmp_path: Path
) -> None:
    recipe = slow_recipe(tmp_path, "quiet")
    result = baked.run("bake", "--no-cache", str(recipe))
    lines = result.stderr.splitlines()
    timed = [line for line in lines if re.fullmatch(r"quiet: [a-z ]+  \d+\.\d\ds", line)]
    stages = [line.split(":", 1)[1].rsplit(None, 1)[0].strip() for line in timed]
    assert stages[:3] == ["prepare root", "install packages", "run steps"], lines
    assert "capture layer" in stages and "commit" in stages
    assert MARKER not in result.stderr, "without -v, a step's output stays out of the log"
    assert not [line for line in lines if line.endswith("...")], "no progress-only lines"


def test_a_kept_root_says_where_it_is_and_not_to_keep_it(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "kept.toml"
    recipe.write_text('[image]\nname = "kept"\nparent = "tiny"\n\n[[steps]]\nrun = "exit 4"\n')
    result = baked.run("bake", "--on-error=keep", str(recipe), check=False)
    builds = list((baked.home / "builds").iterdir())
    try:
        assert result.returncode == 1
        assert "kept the build root" in result.stderr
        assert "hint: the build root is kept" in result.stderr
        assert "re-run with --on-error=keep" not in result.stderr
    finally:
        for build in builds:
            subprocess.run(["umount", str(build / "root")], check=False, capture_output=True)
            subprocess.run(["rm", "-rf", "--one-file-system", str(build)], check=True)
