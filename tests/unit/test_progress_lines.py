"""Output as a log meets it: into a pipe or a file, stdout is flushed at each line and a
command's progress is one line per message, each readable while the command still runs
(`kiln test > log 2>&1`, then `tail -f log`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    from kiln.cli.output import console, progress

    print("stdout buffered per line:", sys.stdout.line_buffering)
    sys.stdout.write("written\\n")
    with progress("testing web:1") as log:
        log("booting test-web")
        sys.stdin.readline()  # the parent has read the lines above while we wait
        log("running tests")
    console.print("passed", highlight=False)
    """
)


def test_each_line_is_readable_while_the_command_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin and child.stdout and child.stderr
    try:
        # the child is blocked on stdin: these lines came through the pipes as written
        assert child.stdout.readline() == "stdout buffered per line: True\n"
        assert child.stdout.readline() == "written\n"
        assert child.stderr.readline() == "testing web:1: booting test-web\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stderr.readline() == "testing web:1: running tests\n"
        assert child.stdout.readline() == "passed\n"
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
