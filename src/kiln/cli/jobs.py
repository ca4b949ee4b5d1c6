"""`kiln worker`, `kiln jobs`, `kiln jobs logs ID`, and `--queue` for the commands that
can run as a job: parse, call kiln.app.jobs, render.

A command gets ``--queue`` with two lines: ``from kiln.cli.jobs import queue_option`` and
``@queue_option("kiln.TASK")`` among its options. With ``--queue [QUEUE]`` the command
is not run here: its arguments become the task's (ARGUMENTS) and the job is deferred.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from kiln.cli.groups import Group
from kiln.cli.output import console, err, json_flag, policy_option, print_json, wide

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_QUEUE = "default"
STATES = ("queued", "running", "failed", "done")


def _absolute(path: Any) -> str | None:
    return None if path is None else str(Path(path).absolute())


def _refuse(what: str) -> None:
    from kiln.errors import BadInput

    raise BadInput(f"{what} cannot go with --queue", hint="leave it out, or run the command here")


def _bake(kw: Mapping[str, Any]) -> dict[str, Any]:
    if kw.get("on_error") == "keep":
        _refuse("--on-error keep")
    return {"path": _absolute(kw["path"]), "no_cache": kw["no_cache"], "mirror": kw.get("mirror")}


def _test(kw: Mapping[str, Any]) -> dict[str, Any]:
    if kw.get("config_file") is not None:
        _refuse("--config")
    return {
        "ref": kw["ref"],
        "sets": list(kw["sets"]),
        "converge": kw.get("check_convergence", False),
    }


def _refresh(kw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "names": list(kw["names"]),
        "security_only": kw["security_only"],
        "promote": kw["channel"],
        "parallel": kw["parallel"],
        "max_failures": kw["max_failures"],
        "fetch": kw["fetch"],
        "policy": _absolute(kw["policy_file"]),
    }


def _propagate(kw: Mapping[str, Any]) -> dict[str, Any]:
    if kw["dry_run"]:
        _refuse("--dry-run")
    return {
        "ref": kw["ref"],
        "to": kw["channel"],
        "parallel": kw["parallel"],
        "max_failures": kw["max_failures"],
        "recipes": _absolute(kw["recipes"]),
        "include_pinned": kw["include_pinned"],
        "policy": _absolute(kw["policy_file"]),
    }


def _prove(kw: Mapping[str, Any]) -> dict[str, Any]:
    if not kw["prove"]:
        from kiln.errors import BadInput

        raise BadInput("kiln rebuild --queue defers a proof", hint="add --prove")
    return {
        "ref": kw["ref"],
        "no_package_cache": kw["no_package_cache"],
        "mirror": kw.get("mirror"),
    }


def _rollout(kw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "group": kw["group"],
        "to": kw["to"],
        "sets": list(kw["sets"]),
        "resume": kw["resume"],
        "promote": kw["promote"],
        "policy": _absolute(kw["policy_file"]),
    }


# task -> the job arguments a command's own parameters give
ARGUMENTS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "kiln.bake": _bake,
    "kiln.test": _test,
    "kiln.refresh": _refresh,
    "kiln.propagate": _propagate,
    "kiln.prove": _prove,
    "kiln.rollout": _rollout,
}


def defer(
    task: str, args: Mapping[str, Any], queue: str = DEFAULT_QUEUE, as_json: bool = False
) -> None:
    """Defer one job and print its id (``--json``: {"job", "task", "queue", "lock",
    "deferred"}); a job already waiting for the same name is reported, not an error."""
    from kiln.app import jobs
    from kiln.app.workspace import with_workspace

    done = with_workspace(jobs.defer, task, dict(args), queue)
    if as_json:
        print_json(done.to_json())
    elif done.deferred:
        console.print(
            f"job {done.job} deferred: {done.task} on queue {done.queue} "
            f"(lock {escape(done.lock)})",
            highlight=False,
        )
    else:
        console.print(
            f"job {done.job} ({done.task} on queue {done.queue}) already waits for "
            f"{escape(done.lock)}: not deferred again",
            highlight=False,
        )


def queue_option(task: str) -> Callable[[F], F]:
    """``--queue [QUEUE]``: defer the command as a job of ``task`` (queue ``default``
    unless named) instead of running it; its parameters become the job's arguments."""
    arguments = ARGUMENTS[task]

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, queue: str | None = None, **kwargs: Any) -> Any:
            if queue is None:
                return command(*args, **kwargs)
            from kiln.app.jobs import require_queue
            from kiln.home import Home

            require_queue(Home.from_env(), "--queue")
            defer(task, arguments(kwargs), queue, as_json=bool(kwargs.get("as_json")))
            return None

        option = click.option(
            "--queue",
            "queue",
            is_flag=False,
            flag_value=DEFAULT_QUEUE,
            default=None,
            metavar="[QUEUE]",
            help="defer this as a job for 'kiln worker' on the shared catalog (queue "
            f"{DEFAULT_QUEUE} unless named; use --queue=NAME) and print its id",
        )
        return option(wrapper)  # type: ignore[return-value]

    return decorate


def _stamp(line: str) -> None:
    import time

    err.print(f"{time.strftime('%H:%M:%S')} {escape(line)}", highlight=False, soft_wrap=True)


@click.command()
@click.option(
    "--queues",
    metavar="Q1,Q2",
    help="take jobs from these queues only (default: every queue)",
)
@click.option("--concurrency", type=int, default=1, show_default=True, help="jobs at once")
@policy_option("whose [schedule] gives the periodic jobs")
@click.option(
    "--stop-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="on SIGTERM/SIGINT, wait this long for running jobs, then give them back to the "
    "queue for another worker",
)
@click.option("--heartbeat", type=float, default=2.0, hidden=True)
@click.option("--check-every", type=float, default=10.0, hidden=True)
@click.option("--cron", "crons", multiple=True, hidden=True, metavar="TASK=EXPR")
def worker(
    queues: str | None,
    concurrency: int,
    policy_file: Path | None,
    stop_timeout: float,
    heartbeat: float,
    check_every: float,
    crons: tuple[str, ...],
) -> None:
    """Run the shared catalog's jobs for this KILN_HOME until SIGTERM or SIGINT.

    Jobs are deferred by --queue (kiln bake, test, refresh, propagate, rebuild --prove,
    rollout) and by the policy's [schedule]. A worker whose heartbeat stops (killed, host
    down) has its job run again by another worker."""
    from kiln.app.jobs_args import queue_name
    from kiln.app.jobs_worker import WorkerOptions, run_worker
    from kiln.app.workspace import with_workspace
    from kiln.errors import BadInput

    names = [queue_name(q.strip()) for q in queues.split(",")] if queues else None
    parsed = {}
    for item in crons:
        key, equals, expression = item.partition("=")
        if not equals:
            raise BadInput(f"--cron {item!r} is not TASK=EXPRESSION")
        parsed[key] = expression
    if heartbeat <= 0 or check_every <= 0 or stop_timeout < 0:
        raise BadInput("--heartbeat and --check-every are positive, --stop-timeout not negative")
    options = WorkerOptions(
        queues=names,
        concurrency=concurrency,
        policy_file=policy_file,
        heartbeat=heartbeat,
        check_every=check_every,
        stop_timeout=stop_timeout,
        crons=parsed,
    )
    with_workspace(run_worker, options, _stamp)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--state", type=click.Choice(STATES), help="only the jobs in this state")
@click.option("--limit", type=int, default=200, show_default=True, help="the newest N jobs")
@json_flag
@click.pass_context
def jobs(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """List the shared catalog's jobs, newest first: id, task, arguments, state, queue,
    the host and KILN_HOME that ran it, times. 'kiln jobs logs ID' prints one's output."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from kiln.app import jobs as use
    from kiln.app.workspace import with_workspace

    found = with_workspace(use.list_jobs, state, limit)
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no jobs", highlight=False)
        return
    table = Table(
        "ID", "TASK", "ARGS", "STATE", "QUEUE", "RAN ON", "DEFERRED", "FINISHED", box=None
    )
    for job in found:
        ran = f"{job['host']}:{job['home']}" if job["host"] else "-"
        table.add_row(
            str(job["id"]),
            escape(job["task"]),
            escape(job["summary"]),
            job["state"],
            escape(job["queue"]),
            escape(ran),
            job["deferred_at"] or "-",
            job["finished_at"] or "-",
        )
    wide.print(table)


@jobs.command()
@click.argument("job_id", metavar="ID", type=int)
@json_flag
def logs(job_id: int, as_json: bool) -> None:
    """Print a job's output (each run's, when a worker stopped or died during one)."""
    from kiln.app import jobs as use
    from kiln.app.workspace import with_workspace

    found = with_workspace(use.job_logs, job_id)
    data = found.to_json()
    if as_json:
        print_json(data)
        return
    runs = data["log"]
    for run in runs:
        if len(runs) > 1:
            code = "" if run["exit_code"] is None else f", exit {run['exit_code']}"
            err.print(
                f"--- run {run['attempt'] + 1} on {escape(run['host'])}:{escape(run['home'])}: "
                f"{run['state']}{code}",
                highlight=False,
            )
        sys.stdout.write(run["output"])
        if run["output"] and not run["output"].endswith("\n"):
            sys.stdout.write("\n")
    if not runs:
        err.print(f"job {job_id} is {data['state']}: no run yet", highlight=False)


def register(group: click.Group) -> None:
    group.add_command(worker)
    group.add_command(jobs)
