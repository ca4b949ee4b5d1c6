"""kiln's long work as jobs on the shared catalog's PostgreSQL (procrastinate): defer one
(``--queue``), list them (``kiln jobs``), read a job's output (``kiln jobs logs``).

The tasks are ``kiln.bake``, ``kiln.test``, ``kiln.refresh``, ``kiln.propagate`` (which
hands each item to the queue as a ``kiln.propagate_item``: kiln.app.propagate_spread),
``kiln.prove`` and ``kiln.rollout`` (their arguments: kiln.app.jobs_args.SPECS). Each
job holds a lock and a queueing lock named for the image it works on
(jobs_args.lock_of): one job per name runs at a time, and one job of each task per name
waits (jobs_args.queueing_lock_of). A second job of a task deferred for a name while one
waits is not written: the caller is told which job waits.
``kiln worker`` runs them (kiln.app.jobs_worker). An SQLite catalog has no queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.app.jobs_args import Job, check, lock_of, queue_name, queueing_lock_of, summary
from kiln.app.workspace import Workspace
from kiln.catalog import jobs as rows
from kiln.catalog import jobschema
from kiln.errors import BadInput, StoreError
from kiln.home import Home

DEFAULT_QUEUE = "default"  # procrastinate's own default queue


def require_queue(home: Home, what: str) -> str:
    """The catalog's URL, when it has a job queue; else BadInput (exit 2)."""
    url = home.catalog_url
    if not jobschema.is_postgres(url):
        raise BadInput(
            f"{what} needs a shared PostgreSQL catalog: the catalog is SQLite "
            f"({url}), which has no job queue",
            hint="set KILN_CATALOG_URL to a PostgreSQL catalog (postgresql+psycopg://...) "
            "and run 'kiln catalog upgrade' once (docs/sharing.md)",
        )
    return url


def require_installed(workspace: Workspace) -> None:
    if not jobschema.status(workspace.catalog.engine).installed:
        raise StoreError(
            f"the catalog has no job queue yet: schema {jobschema.SCHEMA} is not installed",
            hint="run 'kiln catalog upgrade' once for the shared catalog",
        )


@dataclass(frozen=True)
class Deferred:
    """A job written to the queue, or (``deferred`` False) the one already waiting there
    with the same queueing lock."""

    job: int
    task: str
    queue: str
    lock: str
    deferred: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "task": self.task,
            "queue": self.queue,
            "lock": self.lock,
            "deferred": self.deferred,
        }


def build_app(connector: Any) -> Any:
    """A procrastinate App that knows kiln's task names (enough to defer them)."""
    from procrastinate import App

    return App(connector=connector)


def defer(
    workspace: Workspace, task: str, args: dict[str, Any], queue: str = DEFAULT_QUEUE
) -> Deferred:
    """Check a job's arguments (BadInput, exit 2) and put it in the queue."""
    url = require_queue(workspace.home, "--queue")
    job = check(task, args)
    queue_name(queue)
    require_installed(workspace)
    return _defer(workspace, url, job, queue)


def _defer(workspace: Workspace, url: str, job: Job, queue: str) -> Deferred:
    from procrastinate.exceptions import AlreadyEnqueued

    lock, queueing = lock_of(job), queueing_lock_of(job)
    app = build_app(jobschema.sync_connector(url))
    app.open()
    try:
        for _ in range(5):  # the waiting job may start between the refusal and the look
            deferrer = app.configure_task(job.task, lock=lock, queueing_lock=queueing, queue=queue)
            try:
                job_id = deferrer.defer(**job.args)
            except AlreadyEnqueued:
                found = rows.waiting(workspace.catalog, queueing)
                if found is not None:
                    return Deferred(found.id, found.task, found.queue, lock, False)
                continue
            return Deferred(int(job_id), job.task, queue, lock, True)
    finally:
        app.close()
    raise StoreError(
        f"the job for {lock} could not be deferred: another job with its queueing lock "
        "kept appearing and starting",
        hint="run the command again",
    )


def list_jobs(
    workspace: Workspace, state: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest jobs, newest first (``kiln jobs``)."""
    require_queue(workspace.home, "kiln jobs")
    found = rows.list_jobs(workspace.catalog, state, limit)
    return [{**row.to_json(), "summary": summary(row.args)} for row in found]


@dataclass(frozen=True)
class Logs:
    job: rows.JobRow
    runs: list[rows.RunRow]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.job.to_json(),
            "summary": summary(self.job.args),
            "log": [
                {
                    "attempt": run.attempt,
                    "host": run.host,
                    "home": run.home,
                    "state": run.state,
                    "exit_code": run.exit_code,
                    "started_at": _iso(run.started_at),
                    "finished_at": _iso(run.finished_at),
                    "output": run.output,
                }
                for run in self.runs
            ],
        }


def _iso(moment: Any) -> str | None:
    from kiln.times import iso

    return iso(moment)


def job_logs(workspace: Workspace, job_id: int) -> Logs:
    """A job and the output of each of its runs (``kiln jobs logs ID``)."""
    require_queue(workspace.home, "kiln jobs logs")
    found = rows.job(workspace.catalog, job_id)
    if found is None:
        raise BadInput(f"no job {job_id} in the queue", hint="'kiln jobs' lists them")
    return Logs(found, rows.runs(workspace.catalog, job_id))
