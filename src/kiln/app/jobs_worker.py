"""``kiln worker``: run the shared catalog's jobs for this host's KILN_HOME until SIGTERM
or SIGINT.

A worker registers with procrastinate and beats its heart every HEARTBEAT seconds. Every
worker also checks, every CHECK_SECONDS, for jobs left running by a worker whose heart
stopped (killed, its host gone): each goes back to the queue, and another worker runs
it; the dead workers' rows are pruned. On SIGTERM or SIGINT a worker takes no new job,
waits up to ``stop_timeout`` for the one it runs, its heart still beating (procrastinate
stops its own heartbeat first: kiln beats too, so no other worker takes the job), then
abandons it (the child is told to stop; the job goes back to the queue for another
worker) and exits 0.

Periodic jobs come from the policy's ``[schedule]`` (refresh, prove): procrastinate's
periodic deferrer runs in every worker, and the catalog defers each period's job once
however many workers run (one row per task, schedule and timestamp).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from procrastinate import App, BaseRetryStrategy, RetryDecision
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Status
from procrastinate.worker import Worker as ProcrastinateWorker

from kiln.app.jobs import require_installed, require_queue
from kiln.app.jobs_args import check, lock_of, queueing_lock_of
from kiln.app.jobs_run import Abandoned, JobFailed, Run, Worker, execute
from kiln.app.workspace import Workspace
from kiln.catalog import jobschema
from kiln.catalog.jobs import release_queueing_lock
from kiln.errors import BadInput

HEARTBEAT = 2.0  # seconds between a worker's heartbeats
STALLED_BEATS = 3  # a worker whose last heartbeat is older than this many is dead
CHECK_SECONDS = 10.0  # how often each worker looks for jobs of dead workers
STOP_TIMEOUT = 60.0  # a stopping worker waits this long for its job, then abandons it
MAX_RUNS = 5  # a job whose worker died this many times fails instead of running again
POLL_SECONDS = 2.0  # the queue is polled this often besides LISTEN/NOTIFY
PERIODIC = {"refresh": "kiln.refresh", "prove": "kiln.prove"}
PERIODIC_ID = "schedule"


@dataclass(frozen=True)
class WorkerOptions:
    queues: list[str] | None = None  # None: every queue
    concurrency: int = 1
    policy_file: Path | None = None
    heartbeat: float = HEARTBEAT
    check_every: float = CHECK_SECONDS
    stop_timeout: float = STOP_TIMEOUT
    crons: Mapping[str, str] = field(default_factory=dict)  # task -> cron, over the policy's

    @property
    def stalled_after(self) -> float:
        return self.heartbeat * STALLED_BEATS


def schedule_of(schedule: Any, crons: Mapping[str, str] = {}) -> dict[str, str]:
    """The periodic jobs a policy's ``[schedule]`` asks for: task name -> cron expression
    (``crons``, e.g. from ``--cron prove=...``, overrides; six fields give seconds)."""
    from croniter import croniter  # type: ignore[import-untyped]

    from kiln.lifecycle.policy import cron

    found: dict[str, str] = {}
    for key, task in PERIODIC.items():
        value = getattr(schedule, key, None) if schedule is not None else None
        if value:
            expression = cron(value)
            if expression is None:
                raise BadInput(f"[schedule] {key} = {value!r} is not a schedule")
            found[task] = expression
    for key, expression in crons.items():
        task = PERIODIC.get(key, key)
        if task not in PERIODIC.values():
            raise BadInput(
                f"--cron {key}=...: no periodic task {key!r}", hint="use refresh or prove"
            )
        if not croniter.is_valid(expression):
            raise BadInput(f"--cron {key}={expression!r}: not a cron expression")
        found[task] = expression
    return found


class Retry(BaseRetryStrategy):
    """Retry a job only when its worker abandoned it (stopping); a failure is final."""

    def get_retry_decision(self, *, exception: BaseException, job: Any) -> RetryDecision | None:
        if isinstance(exception, Abandoned) and job.attempts < MAX_RUNS:
            return RetryDecision(retry_in={"seconds": 0})
        return None


def _task(task: str, worker: Worker) -> Callable[..., Any]:
    async def run_job(context: Any, **raw: Any) -> str:
        job = check(task, raw)  # a hostile row fails here, before anything runs
        run = await asyncio.to_thread(Run, worker, int(context.job.id), int(context.job.attempts))
        try:
            result = await execute(worker, run, job)
        except asyncio.CancelledError:
            shutdown = context.abort_reason() == AbortReason.SHUTDOWN
            run.note(
                "the worker stopped: the job goes back to the queue" if shutdown else "aborted"
            )
            await asyncio.shield(run.finish("abandoned" if shutdown else "aborted", None))
            if shutdown:
                raise Abandoned(f"the worker on {worker.host} stopped") from None
            raise
        except JobFailed as exc:
            run.note(f"error: {exc.message.splitlines()[0]}")
            await run.finish("failed", exc.code)
            raise
        except Exception as exc:
            run.note(f"error: {exc}")
            await run.finish("failed", None)
            raise
        await run.finish("done", 0)
        return result

    run_job.__name__ = task.replace(".", "_")
    return run_job


def build_worker_app(
    url: str,
    worker: Worker,
    options: WorkerOptions,
    schedule: dict[str, str],
    policy: Path | None = None,
) -> Any:
    """The worker's procrastinate App: kiln's tasks and nothing else, and the periodic
    jobs of ``schedule`` (a periodic refresh applies ``policy``, the file the schedule
    came from)."""
    from kiln.app.jobs_args import SPECS

    app = App(connector=jobschema.connector(url, pool=options.concurrency + 3))
    for name in list(app.tasks):  # procrastinate's built-in tasks: no row may start them
        del app.tasks[name]
    queue = options.queues[0] if options.queues else "default"
    tasks = {}
    for task in SPECS:
        tasks[task] = app.task(name=task, pass_context=True, retry=Retry())(_task(task, worker))
    for task, expression in schedule.items():
        given = {"policy": str(policy.absolute())} if task == "kiln.refresh" and policy else {}
        job = check(task, given)
        app.periodic(
            cron=expression,
            periodic_id=PERIODIC_ID,
            queue=queue,
            lock=lock_of(job),
            queueing_lock=queueing_lock_of(job),
            task_kwargs=dict(given),
        )(tasks[task])
    return app


async def _check_stalled(
    app: Any, catalog: Any, options: WorkerOptions, log: Callable[[str], None]
) -> None:
    manager = app.job_manager
    while True:
        await asyncio.sleep(options.check_every)
        try:
            stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=options.stalled_after)
            for job in stalled:
                if job.attempts + 1 >= MAX_RUNS:
                    await manager.finish_job(job, Status.FAILED, delete_job=False)
                    log(f"job {job.id} ({job.task_name}): its worker died {MAX_RUNS} times: failed")
                    continue
                # a job killed before it let go of its queueing lock would clash with
                # one that waits for its name
                await asyncio.to_thread(release_queueing_lock, catalog, int(job.id))
                await manager.retry_job(job)
                log(
                    f"job {job.id} ({job.task_name}): its worker stopped beating: back in the queue"
                )
            pruned = await manager.prune_stalled_workers(options.stalled_after)
            if pruned:
                log(f"pruned dead workers {', '.join(map(str, pruned))}")
        except Exception as exc:  # a rival retried it first, a lost connection: next round
            log(f"stalled-job check: {' '.join(str(exc).split())}")


async def _beat(app: Any, runner: Any, options: WorkerOptions, log: Callable[[str], None]) -> None:
    """The worker's heartbeat while it is registered, its shutdown included: procrastinate
    stops its own when the worker is asked to stop, but the worker then waits up to
    --stop-timeout for its jobs, and a silent worker's job would run again elsewhere."""
    while True:
        await asyncio.sleep(options.heartbeat)
        worker_id = runner.worker_id
        if worker_id is not None:
            try:
                await app.job_manager.update_heartbeat(worker_id)
            except Exception as exc:  # a lost connection: the next beat tries again
                log(f"heartbeat: {' '.join(str(exc).split())}")


async def _serve(app: Any, worker: Worker, options: WorkerOptions) -> None:
    async with app.open_async():
        runner = ProcrastinateWorker(
            app=app,
            queues=options.queues,
            concurrency=options.concurrency,
            name=f"{worker.host}:{worker.home.root}",
            update_heartbeat_interval=options.heartbeat,
            stalled_worker_timeout=options.stalled_after,
            fetch_job_polling_interval=POLL_SECONDS,
            abort_job_polling_interval=POLL_SECONDS,
            shutdown_graceful_timeout=options.stop_timeout,
            install_signal_handlers=True,
        )
        side = [
            asyncio.create_task(_check_stalled(app, worker.catalog, options, worker.log)),
            asyncio.create_task(_beat(app, runner, options, worker.log)),
        ]
        try:
            await cast(Any, runner).run()  # untyped in procrastinate
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)


def run_worker(workspace: Workspace, options: WorkerOptions, log: Callable[[str], None]) -> None:
    """Run jobs until SIGTERM or SIGINT (see the module's docstring)."""
    url = require_queue(workspace.home, "kiln worker")
    if options.concurrency < 1 or options.concurrency > 64:
        raise BadInput("--concurrency is a whole number from 1 to 64")
    require_installed(workspace)
    policy = None
    from kiln.lifecycle.policyfile import locate

    found = locate(workspace.home, options.policy_file)
    if found is not None:
        from kiln.lifecycle.policy import load

        policy = load(found)
    schedule = schedule_of(policy.schedule if policy is not None else None, options.crons)
    worker = Worker.here(workspace.home, workspace.catalog, log)
    app = build_worker_app(url, worker, options, schedule, found)
    for task, expression in sorted(schedule.items()):
        log(f"periodic {task}: {expression}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    queues = ", ".join(options.queues or ["every queue"])
    log(f"worker {worker.host}:{workspace.home.root} on {queues}")
    asyncio.run(_serve(app, worker, options))
