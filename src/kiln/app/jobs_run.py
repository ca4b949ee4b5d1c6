"""One run of a job on a worker: the kiln command line it becomes, run for the worker's
own KILN_HOME in a child process, its output kept as the job's log.

The child is ``sys.executable -m kiln.cli.main ...`` with the argv kiln.app.jobs_args
built from the job's checked arguments. It is started through kiln.proc in a session of
its own, under ``setpriv --pdeathsig INT``: if the worker dies (SIGKILL), the child gets
SIGINT and stops the way an interrupted kiln does (a bake takes its version back), so a
job retried on another worker never races a leftover of itself. Its stdout and stderr go
to one file in KILN_HOME/tmp, copied into the catalog as it grows and when it ends.
A child that exits non-zero fails the job with the tail of that output.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import proc, refs
from kiln.app.jobs_args import Job, argv
from kiln.catalog import jobs as rows
from kiln.errors import KilnError, StoreError
from kiln.home import Home

POLL_SECONDS = 0.25
SAVE_SECONDS = 3.0  # how often a running job's output is copied into the catalog
STOP_SECONDS = 30.0  # a child told to stop (SIGINT) is killed after this
ERROR_LINES = 20


class JobFailed(KilnError):
    """A job's command exited non-zero (its output is the job's log)."""

    def __init__(self, message: str, hint: str | None = None, code: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class Abandoned(Exception):
    """The worker stopped while the job ran: it goes back to the queue for another."""


@dataclass(frozen=True)
class Worker:
    """What a worker's children run against: its KILN_HOME and catalog, and the KILN_*
    settings of its own environment (never a job row's)."""

    home: Home
    catalog: Any  # kiln.catalog.Catalog
    host: str
    log: Callable[[str], None]

    @classmethod
    def here(cls, home: Home, catalog: Any, log: Callable[[str], None]) -> Worker:
        return cls(home, catalog, socket.gethostname(), log)

    def env(self) -> dict[str, str]:
        """What a child gets on top of kiln.proc's base environment."""
        extra = {k: v for k, v in os.environ.items() if k.startswith("KILN_")}
        extra["KILN_HOME"] = str(self.home.root)
        if "PYTHONPATH" in os.environ:
            extra["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return extra


class Run:
    """One run of one job: its row in kiln_job_runs and its log file."""

    def __init__(self, worker: Worker, job_id: int, attempt: int) -> None:
        self.worker = worker
        self.job_id = job_id
        worker.home.ensure()
        fd, name = tempfile.mkstemp(prefix=f"job-{job_id}-", suffix=".log", dir=worker.home.tmp)
        os.close(fd)
        self.log = Path(name)
        self.id = rows.start_run(
            worker.catalog, job_id, attempt, worker.host, str(worker.home.root), os.getpid()
        )
        self._saved = 0.0
        self._size = 0

    def output(self) -> str:
        try:
            with self.log.open("rb") as stream:
                size = stream.seek(0, os.SEEK_END)
                stream.seek(max(0, size - rows.OUTPUT_MAX))
                return stream.read().decode(errors="replace")
        except OSError:
            return ""

    def note(self, line: str) -> None:
        with self.log.open("a") as stream:
            stream.write(line.rstrip("\n") + "\n")

    async def save(self) -> None:
        """Copy the output into the catalog, at most every SAVE_SECONDS, when it grew."""
        now = time.monotonic()
        try:
            size = self.log.stat().st_size
        except OSError:
            return
        if now - self._saved >= SAVE_SECONDS and size != self._size:
            self._saved, self._size = now, size
            with suppress(StoreError):  # a lost update is retried; the run goes on
                await asyncio.to_thread(
                    rows.save_output, self.worker.catalog, self.id, self.output()
                )

    async def finish(self, state: str, code: int | None) -> None:
        await asyncio.to_thread(
            rows.finish_run, self.worker.catalog, self.id, state, code, self.output()
        )
        with suppress(OSError):
            self.log.unlink()

    async def command(self, words: list[str], cwd_note: str = "") -> int:
        """Run one child to its end (output appended to the log); its exit code. When the
        job is cancelled (the worker stops, or someone aborts it), the child is told to
        stop (SIGINT to its session), killed after STOP_SECONDS, and the cancel goes on."""
        self.note(f"$ {' '.join(words)}{cwd_note}")
        child = proc.spawn_detached(
            ["setpriv", "--pdeathsig", "INT", "--", *words], self.log, env=self.worker.env()
        )
        try:
            while child.poll() is None:
                await asyncio.sleep(POLL_SECONDS)
                await self.save()
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_stop, child))
            raise
        return int(child.returncode)


def _stop(child: Any) -> None:
    with suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    try:
        child.wait(STOP_SECONDS)
    except Exception:  # still there: kill its whole session
        with suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def kiln(*words: str) -> list[str]:
    return [sys.executable, "-m", "kiln.cli.main", *words]


async def execute(worker: Worker, run: Run, job: Job) -> str:
    """Run the job's commands; a short result, or JobFailed."""
    if job.task == "kiln.bake" and job.args["git"] is not None:
        return await _git_bake(worker, run, job)
    if job.task == "kiln.prove" and job.args["ref"] is None:
        return await _prove_channels(worker, run, job)
    return await _one(run, kiln(*argv(job)))


async def _one(run: Run, words: list[str]) -> str:
    code = await run.command(words)
    if code != 0:
        text = proc.tail(run.output(), ERROR_LINES)
        raise JobFailed(f"kiln {words[3]} exited {code}:\n{text}", code=code)
    return f"kiln {words[3]} exited 0"


async def _git_bake(worker: Worker, run: Run, job: Job) -> str:
    """Clone the repository into a scratch folder of KILN_HOME/tmp, check out the commit
    (detached), bake the recipe in it, remove the folder."""
    a = job.args
    scratch = Path(tempfile.mkdtemp(prefix=f"job-{run.job_id}-git-", dir=worker.home.tmp))
    clone = scratch / "repo"
    safe = ["-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null"]
    try:
        for words in (
            ["git", *safe, "clone", "--quiet", "--no-checkout", "--", a["git"], str(clone)],
            ["git", *safe, "-C", str(clone), "checkout", "--quiet", "--detach", a["commit"]],
        ):
            code = await run.command(words)
            if code != 0:
                raise JobFailed(
                    f"git {'checkout' if '-C' in words else 'clone'} failed (exit {code}):\n"
                    + proc.tail(run.output(), ERROR_LINES),
                    code=code,
                )
        found = _inside(clone, a["recipe"] or ".")
        return await _one(run, kiln(*argv(job, recipe=found)))
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _inside(clone: Path, relative: str) -> Path:
    """The recipe named inside the clone, refused if it is missing or (a symlink in the
    repository) leads out of it."""
    root = clone.resolve()
    found = (clone / relative).resolve()
    if not found.is_relative_to(root) or not found.exists():
        raise JobFailed(
            f"the repository has no recipe at {relative!r} (or it leads out of the clone)",
            hint="name a recipe file or folder inside the repository with 'recipe'",
        )
    return found


async def _prove_channels(worker: Worker, run: Run, job: Job) -> str:
    """The periodic proof: rebuild every image a channel points at, each once; fails when
    one of them is not proven (each proof is recorded in the catalog either way)."""
    listing = await asyncio.to_thread(proc.output, kiln("channels", "--json"), env=worker.env())
    images = parse_channels(listing)
    if not images:
        run.note("no channel points at an image: nothing to prove")
        return "nothing to prove"
    failed = []
    for image in images:
        one = Job(job.task, {**job.args, "ref": image})
        code = await run.command(kiln(*argv(one)))
        if code != 0:
            failed.append(image)
    if failed:
        raise JobFailed(
            f"{len(failed)} of {len(images)} images not proven: {', '.join(failed)}\n"
            + proc.tail(run.output(), ERROR_LINES)
        )
    return f"proven: {', '.join(images)}"


def parse_channels(text: str) -> list[str]:
    """The distinct images (name@digest) the channels of ``kiln channels --json`` point at."""
    found: list[str] = []
    for entry in json.loads(text):
        image, digest = entry.get("name"), entry.get("digest")
        if isinstance(image, str) and isinstance(digest, str):
            ref = f"{image}@{digest}"
            if refs.is_ref(ref) and ref not in found:
                found.append(ref)
    return found
