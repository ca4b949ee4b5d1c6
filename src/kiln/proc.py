"""The one subprocess wrapper: argv lists only, small explicit environment, stdin closed.

A failure raises :class:`CommandError` with the argv, exit code and the tail of the
output, and the command as a person could paste it into a shell.

A command run with ``echo=True`` (build steps, package installs) can also be watched live:
inside :func:`echo_to`, each line of its merged output goes to the callback as it arrives
(``kiln bake -v``); :func:`prefixed` labels the lines of one stage or step.

A command whose output is a stream (tar writing a layer, zstd decompressing an archive) is
started with :func:`reading`, one that is fed a stream (tar unpacking a layer) with
:func:`feeding`: the block moves the bytes through one pipe while a thread drains stderr,
keeping its last lines, so a child that writes much to stderr (tar's "socket ignored" for
each of 20,000 sockets) never blocks in a full pipe while the block waits for the other one.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import IO

from kiln.errors import KilnError, disk_full, space_hint

TAIL_LINES = 25
ECHO_KEEP = 400  # lines of an echoed command kept for its error message
ECHO_LINE_MAX = 64 << 10  # a longer line arrives in pieces
STDERR_KEEP = 200  # lines of a streaming command's stderr kept for its error message
DRAIN_CHUNK = 1 << 20

Echo = Callable[[str], None]
_echo: ContextVar[tuple[Echo, str] | None] = ContextVar("kiln_echo", default=None)


# What a child process sees unless the caller adds more: enough to find tools and speak UTF-8.
# A command in a build root (kiln.sandbox) or a machine (kiln.machines.enter) starts from it
# too, and an image's config takes its PATH when its parent sets none.
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


class Streaming:
    """A child started by :func:`reading` or :func:`feeding`: its pipe for the block, and,
    once the block is left, its exit code and the last lines of its stderr."""

    def __init__(self, argv: Sequence[str], child: subprocess.Popen[bytes]) -> None:
        self.argv = list(argv)
        self.returncode: int | None = None
        self._child = child
        self._kept: deque[bytes] = deque(maxlen=STDERR_KEEP)
        assert child.stderr is not None
        self._drain = threading.Thread(target=self._keep, args=(child.stderr,), daemon=True)
        self._drain.start()

    @property
    def stdout(self) -> IO[bytes]:
        """The child's stdout (:func:`reading`), buffered: ``read(n)`` returns n bytes
        until the end."""
        assert self._child.stdout is not None
        return self._child.stdout

    @property
    def stdin(self) -> IO[bytes]:
        """The child's stdin (:func:`feeding`)."""
        assert self._child.stdin is not None
        return self._child.stdin

    @property
    def errors(self) -> str:
        """The last :data:`STDERR_KEEP` lines the child wrote to stderr."""
        return b"".join(self._kept).decode(errors="replace")

    def _keep(self, stream: IO[bytes]) -> None:
        while line := stream.readline(ECHO_LINE_MAX):
            self._kept.append(line)


@contextmanager
def reading(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True
) -> Iterator[Streaming]:
    """Run argv with its stdout a pipe the block reads (``streaming.stdout``), stdin closed.

    When the block ends, what the child still writes is read and dropped and its exit code
    taken (``streaming.returncode``); with ``check``, a failure raises :class:`CommandError`
    with the tail of its stderr. When the block raises, the child is killed.
    """
    child = subprocess.Popen(
        list(argv),
        env=environment(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with _streaming(Streaming(argv, child), child, check) as streaming:
        yield streaming
        while streaming.stdout.read(DRAIN_CHUNK):
            pass


@contextmanager
def feeding(
    argv: Sequence[str],
    *,
    stdout: IO[bytes],
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> Iterator[Streaming]:
    """Run argv with its stdin a pipe the block writes (``streaming.stdin``) and its stdout
    going to the file ``stdout``.

    When the block ends, the pipe is closed and the exit code taken, as :func:`reading`
    does; when the block raises, the child is killed.
    """
    child = subprocess.Popen(
        list(argv),
        env=environment(env),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    with _streaming(Streaming(argv, child), child, check) as streaming:
        yield streaming
        with suppress(BrokenPipeError):  # the child stopped reading: its exit code says why
            streaming.stdin.close()


@contextmanager
def _streaming(
    streaming: Streaming, child: subprocess.Popen[bytes], check: bool
) -> Iterator[Streaming]:
    try:
        try:
            yield streaming
        except BaseException:
            child.kill()
            raise
        finally:
            streaming.returncode = child.wait()
            streaming._drain.join()  # stderr ends with the child
    finally:
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                with suppress(BrokenPipeError):
                    pipe.close()
    if check and streaming.returncode != 0:
        raise CommandError(streaming.argv, streaming.returncode, streaming.errors)


def spawn_detached(
    argv: Sequence[str],
    log: Path,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-lived process in a session of its own, output appended to ``log``;
    ``env``: added to the base environment.

    It outlives kiln (a machine's nspawn); the caller keeps the Popen to watch its start.
    """
    with log.open("ab") as output:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(env),
            start_new_session=True,
            pass_fds=list(pass_fds),
        )


def fork(work: Callable[[], int], close: Sequence[int] = ()) -> int:
    """Fork a worker that runs ``work`` in a copy of this process and exits with what it
    returns (3 if it raised); the parent gets its pid, to reap with os.waitpid. The worker
    closes ``close`` first (descriptors of the parent's it must not hold), runs none of
    the parent's interrupt or termination handlers (the parent kills and reaps it), and
    leaves by os._exit: no exit handler or buffered output of the parent runs twice."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        code = work()
    finally:
        os._exit(code)
