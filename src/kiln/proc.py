"""The one subprocess wrapper: argv lists only, small explicit environment, stdin closed.

A failure raises :class:`CommandError` with the argv, exit code and the tail of the
output, and the command as a person could paste it into a shell.

A command run with ``echo=True`` (build steps, package installs) can also be watched live:
inside :func:`echo_to`, each line of its merged output goes to the callback as it arrives
(``kiln bake -v``); :func:`prefixed` labels the lines of one stage or step.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from kiln.errors import KilnError, disk_full, space_hint

TAIL_LINES = 25
ECHO_KEEP = 400  # lines of an echoed command kept for its error message
ECHO_LINE_MAX = 64 << 10  # a longer line arrives in pieces

Echo = Callable[[str], None]
_echo: ContextVar[tuple[Echo, str] | None] = ContextVar("kiln_echo", default=None)


# What a child process sees unless the caller adds more: enough to find tools and speak UTF-8.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class CommandError(KilnError):
    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        cmd = shlex.join(self.argv)
        message = f"command failed with exit code {returncode}: {cmd}"
        hint = "run the command above by hand to see all of its output"
        if disk_full(output):
            # dpkg-deb, tar, mmdebstrap: the same cause as an ENOSPC of our own, in our words
            message = f"no space left on device: {self.argv[0]} could not write\n  {cmd}"
            hint = space_hint()
        if output.strip():
            message += "\n--- last lines of output ---\n" + tail(output)
        super().__init__(message, hint=hint)


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(BASE_ENV)
    for key in ("TMPDIR", "TERM", "http_proxy", "https_proxy", "no_proxy"):
        if key in os.environ:
            env[key] = os.environ[key]
    if extra:
        env.update(extra)
    return env


@contextmanager
def echo_to(callback: Echo | None) -> Iterator[None]:
    """Within this block, echoed commands pass each output line to ``callback``."""
    token = _echo.set(None if callback is None else (callback, ""))
    try:
        yield
    finally:
        _echo.reset(token)


@contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Label the echoed lines of this block (``web steps[2] | ``), in place of any outer
    label; a no-op when nothing is echoed."""
    current = _echo.get()
    token = _echo.set(None if current is None else (current[0], prefix))
    try:
        yield
    finally:
        _echo.reset(token)


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    echo: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv; capture stdout and stderr (merged) unless ``capture`` is False.

    With ``capture=False`` the child's output goes to our stderr, for long commands a person
    wants to watch; the error then carries no tail. With ``echo`` inside :func:`echo_to`,
    each output line also goes to the callback as it arrives, and ``stdout`` holds the
    last :data:`ECHO_KEEP` lines.
    """
    sink = _echo.get() if echo and capture and input is None else None
    if sink is not None:
        callback, prefix = sink
        return _run_echoed(argv, cwd, env, check, lambda line: callback(prefix + line))
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env=environment(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else 2,
        stderr=subprocess.STDOUT if capture else None,
        check=False,
    )
    if check and result.returncode != 0:
        output = result.stdout.decode(errors="replace") if result.stdout else ""
        raise CommandError(argv, result.returncode, output)
    return result


def _run_echoed(
    argv: Sequence[str],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    check: bool,
    callback: Echo,
) -> subprocess.CompletedProcess[bytes]:
    kept: deque[bytes] = deque(maxlen=ECHO_KEEP)
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as child:
        assert child.stdout is not None
        while line := child.stdout.readline(ECHO_LINE_MAX):
            kept.append(line)
            callback(line.decode(errors="replace").rstrip("\r\n"))
        returncode = child.wait()
    data = b"".join(kept)
    if check and returncode != 0:
        raise CommandError(argv, returncode, data.decode(errors="replace"))
    return subprocess.CompletedProcess(list(argv), returncode, data, None)


def output(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
    """Run argv and return its stdout as text (stderr is kept apart and shown on failure)."""
    result = subprocess.run(
        list(argv),
        env=environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def spawn_detached(
    argv: Sequence[str], log: Path, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start a long-lived process in a session of its own, output appended to ``log``.

    It outlives kiln (a machine's nspawn); the caller keeps the Popen to watch its start.
    """
    with log.open("ab") as output:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(),
            start_new_session=True,
            pass_fds=list(pass_fds),
        )
