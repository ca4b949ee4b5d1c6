"""The questions kiln asks of the job queue (``kiln jobs``), and its record of each run
of a job (host, KILN_HOME, output), in the schema ``kiln_jobs`` (kiln.catalog.jobschema).

procrastinate writes the queue's rows itself; these queries read them, and write only
kiln's own table of runs. A job's arguments come back as the row holds them: callers
treat them as hostile (``kiln jobs`` shows a summary, a worker validates them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from kiln.catalog.jobschema import RUNS, SCHEMA
from kiln.errors import StoreError
from kiln.times import iso

if TYPE_CHECKING:
    from kiln.catalog.db import Catalog

# procrastinate's status -> the word kiln shows
STATES = {
    "todo": "queued",
    "doing": "running",
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "aborting": "running",
    "aborted": "aborted",
}
STATUS_OF = {"queued": ["todo"], "running": ["doing", "aborting"], "done": ["succeeded"]}
STATUS_OF["failed"] = ["failed"]
OUTPUT_MAX = 1 << 20  # the tail of a run's output kept in the catalog

_JOBS = f"""
SELECT j.id, j.task_name, j.queue_name, j.status::text AS status, j.args, j.lock,
       j.attempts,
       (SELECT min(e.at) FROM {SCHEMA}.procrastinate_events e
         WHERE e.job_id = j.id AND e.type = 'deferred') AS deferred_at,
       (SELECT max(e.at) FROM {SCHEMA}.procrastinate_events e
         WHERE e.job_id = j.id AND e.type = 'started') AS started_at,
       (SELECT max(e.at) FROM {SCHEMA}.procrastinate_events e
         WHERE e.job_id = j.id
           AND e.type IN ('succeeded', 'failed', 'aborted', 'cancelled')) AS finished_at,
       r.host, r.home, r.state AS run_state, r.exit_code,
       (SELECT count(*) FROM {RUNS} c WHERE c.job_id = j.id) AS runs
  FROM {SCHEMA}.procrastinate_jobs j
  LEFT JOIN LATERAL (
       SELECT host, home, state, exit_code FROM {RUNS} x
        WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1) r ON true
"""


@dataclass(frozen=True)
class JobRow:
    id: int
    task: str
    queue: str
    state: str
    args: dict[str, Any]
    lock: str | None
    attempts: int
    deferred_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    host: str | None
    home: str | None
    runs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "state": self.state,
            "args": self.args,
            "lock": self.lock,
            "attempts": self.attempts,
            "runs": self.runs,
            "host": self.host,
            "home": self.home,
            "deferred_at": iso(self.deferred_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


@dataclass(frozen=True)
class RunRow:
    id: int
    attempt: int
    host: str
    home: str
    state: str  # running | done | failed | abandoned | cancelled
    exit_code: int | None
    started_at: datetime
    finished_at: datetime | None
    output: str


def _args(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {"": value}


def _job(row: Any) -> JobRow:
    return JobRow(
        id=int(row.id),
        task=str(row.task_name),
        queue=str(row.queue_name),
        state=STATES.get(row.status, str(row.status)),
        args=_args(row.args),
        lock=row.lock,
        attempts=int(row.attempts),
        deferred_at=row.deferred_at,
        started_at=row.started_at,
        finished_at=row.finished_at if row.status in ("succeeded", "failed", "aborted") else None,
        host=row.host,
        home=row.home,
        runs=int(row.runs),
    )


def _query(catalog: Catalog, sql: str, params: dict[str, Any]) -> list[Any]:
    try:
        with catalog.engine.connect() as connection:
            return list(connection.execute(text(sql), params))
    except ProgrammingError as exc:
        if "kiln_jobs" in str(exc.orig) and "does not exist" in str(exc.orig):
            raise StoreError(
                f"the catalog has no job queue yet ({SCHEMA} is not installed)",
                hint="run 'kiln catalog upgrade' once for the shared catalog",
            ) from None
        raise
    except DBAPIError as exc:
        raise StoreError(
            f"the job queue could not be read: {exc.orig}",
            hint="check KILN_CATALOG_URL and that the database is up",
        ) from None


def _write(catalog: Catalog, sql: str, params: dict[str, Any]) -> Any:
    try:
        with catalog.engine.begin() as connection:
            result = connection.execute(text(sql), params)
            return result.scalar() if result.returns_rows else None
    except DBAPIError as exc:
        raise StoreError(
            f"the job queue could not be written: {exc.orig}",
            hint="check KILN_CATALOG_URL and that the database is up",
        ) from None


def list_jobs(catalog: Catalog, state: str | None = None, limit: int = 200) -> list[JobRow]:
    """The newest ``limit`` jobs, newest first; with ``state``, only those in it."""
    where = ""
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        where = "WHERE j.status::text = ANY(:statuses)"
        params["statuses"] = STATUS_OF[state]
    rows = _query(catalog, f"{_JOBS} {where} ORDER BY j.id DESC LIMIT :limit", params)
    return [_job(row) for row in rows]


def job(catalog: Catalog, job_id: int) -> JobRow | None:
    rows = _query(catalog, f"{_JOBS} WHERE j.id = :id", {"id": job_id})
    return _job(rows[0]) if rows else None


def waiting(catalog: Catalog, queueing_lock: str) -> JobRow | None:
    """The job that waits in the queue holding ``queueing_lock``, if one does."""
    rows = _query(
        catalog,
        f"{_JOBS} WHERE j.queueing_lock = :lock AND j.status = 'todo' ORDER BY j.id LIMIT 1",
        {"lock": queueing_lock},
    )
    return _job(rows[0]) if rows else None


def runs(catalog: Catalog, job_id: int) -> list[RunRow]:
    """Every run of a job, first first."""
    rows = _query(
        catalog,
        f"SELECT id, attempt, host, home, state, exit_code, started_at, finished_at, output "
        f"FROM {RUNS} WHERE job_id = :id ORDER BY id",
        {"id": job_id},
    )
    return [
        RunRow(
            int(r.id),
            int(r.attempt),
            r.host,
            r.home,
            r.state,
            r.exit_code,
            r.started_at,
            r.finished_at,
            r.output,
        )
        for r in rows
    ]


def start_run(catalog: Catalog, job_id: int, attempt: int, host: str, home: str, pid: int) -> int:
    """Record that this worker started a run of a job; returns the run's id. The job
    lets go of its queueing lock (see :func:`release_queueing_lock`)."""
    release_queueing_lock(catalog, job_id)
    found = _write(
        catalog,
        f"INSERT INTO {RUNS} (job_id, attempt, host, home, pid) "
        "VALUES (:job, :attempt, :host, :home, :pid) RETURNING id",
        {"job": job_id, "attempt": attempt, "host": host, "home": home, "pid": pid},
    )
    return int(found)


def release_queueing_lock(catalog: Catalog, job_id: int) -> None:
    """A running job's queueing lock is of no more use (it keeps a second job from
    *waiting*), and in the way when the job goes back to the queue (its worker died or
    stopped) while another job for the same name waits: the two would clash on the
    queue's unique index. So a job drops it once it runs; its lock stays."""
    _write(
        catalog,
        f"UPDATE {SCHEMA}.procrastinate_jobs SET queueing_lock = NULL "
        "WHERE id = :id AND status <> 'todo'",
        {"id": job_id},
    )


def _tail(output: str) -> str:
    return output[-OUTPUT_MAX:].replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL


def save_output(catalog: Catalog, run_id: int, output: str) -> None:
    """The output of a run so far, while it runs (``kiln jobs logs`` on any host)."""
    _write(
        catalog,
        f"UPDATE {RUNS} SET output = :output, updated_at = now() WHERE id = :id",
        {"id": run_id, "output": _tail(output)},
    )


def finish_run(
    catalog: Catalog, run_id: int, state: str, exit_code: int | None, output: str
) -> None:
    _write(
        catalog,
        f"UPDATE {RUNS} SET state = :state, exit_code = :code, output = :output, "
        "finished_at = now(), updated_at = now() WHERE id = :id",
        {"id": run_id, "state": state, "code": exit_code, "output": _tail(output)},
    )
