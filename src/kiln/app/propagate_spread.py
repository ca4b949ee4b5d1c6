"""A propagation spread over the workers of a shared catalog: each item a job.

``kiln propagate --spread`` (what a ``kiln propagate --queue`` job runs on a worker) plans
and opens the run as kiln propagate does, then hands each item that can start now (its
parent in the run is done, or it has none there) to the queue as a ``kiln.propagate_item``
job and returns. Any worker takes such a job (one per image name at a time) and runs
``kiln propagate-item``: the item is rebaked, tested and promoted as kiln propagate does
it, then the items waiting for it are handed out in turn, or skipped when it failed. An
item handed out is ``queued`` until a worker starts it. The item whose end leaves nothing
queued or running ends the run; after ``--max-failures`` failures nothing new is handed out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.app import propagate as local
from kiln.app import qualify
from kiln.app.propagate import FAILED, PINNED, PLANNED, SKIPPED, Log, Options, Run, Task
from kiln.app.workspace import Workspace
from kiln.catalog import propagations
from kiln.catalog.propagations import DONE
from kiln.errors import NotFound

QUEUED = "queued"
TASK = "kiln.propagate_item"


def hand_out(workspace: Workspace, run: Run, options: Options, log: Log) -> None:
    """Defer a job for every planned item that can start now."""
    tasks = {task.name: task for task in run.tasks}
    for task in sorted(run.tasks, key=lambda t: t.position):
        if task.state != PLANNED:
            continue
        parent = tasks.get(task.after) if task.after else None
        if parent is None or parent.state == run.target:
            _defer(workspace, run, task, options, log)


def _defer(workspace: Workspace, run: Run, task: Task, options: Options, log: Log) -> None:
    from kiln.app import jobs

    args: dict[str, Any] = {
        "run": run.id,
        "item": task.id,
        "name": task.name,
        "max_failures": options.max_failures,
        "policy": str(options.policy_file.absolute()) if options.policy_file else None,
    }
    deferred = jobs.defer(workspace, TASK, args)
    local.commit(workspace, run, task, QUEUED, job=deferred.job)
    log(f"{task.name}: handed to the workers as job {deferred.job}")


def run_item(
    workspace: Workspace,
    run_id: int,
    item_id: int,
    name: str,
    max_failures: int,
    policy_file: Path | None,
    log: Log,
) -> dict[str, Any]:
    """Run one item of a spread propagation, then hand out what waited for it."""
    run = _load(workspace, run_id)
    tasks = {task.name: task for task in run.tasks}
    task = next((t for t in run.tasks if t.id == item_id), None)
    if task is None or task.name != name:
        raise NotFound(f"propagation {run_id} has no item {item_id} of {name}")
    state = task.state
    if state not in (run.target, FAILED, SKIPPED, PINNED):
        options = Options(to=run.channel, max_failures=max_failures, policy_file=policy_file)
        converge = qualify.converge_wanted(workspace, run.channel, policy_file)
        state = local.run_item(workspace.home, run, task, tasks, options, converge, log)
    run = _load(workspace, run_id)
    _follow(workspace, run, name, state, max_failures, policy_file, log)
    return {"propagation": run_id, "item": item_id, "name": name, "state": state}


def _load(workspace: Workspace, run_id: int) -> Run:
    found = propagations.load_run(workspace.catalog, run_id)
    if found is None:
        raise NotFound(f"no propagation {run_id} in the catalog")
    row, channel, _state = found
    return Run(
        row.id, row.origin, row.origin_digest, channel or None, True, local.tasks_of(row.items)
    )


def _follow(
    workspace: Workspace,
    run: Run,
    name: str,
    state: str,
    max_failures: int,
    policy_file: Path | None,
    log: Log,
) -> None:
    """After item ``name`` ended in ``state``: its dependents handed out (or skipped when
    it failed), and the run ended when nothing of it is queued or running any more."""
    failures = sum(task.state == FAILED for task in run.tasks)
    waiting = [t for t in run.tasks if t.after == name and t.state == PLANNED]
    if state != run.target:
        _skip_below(workspace, run, name, f"its parent {name} {state}", log)
    elif failures < max_failures:
        options = Options(to=run.channel, max_failures=max_failures, policy_file=policy_file)
        for task in waiting:
            _defer(workspace, run, task, options, log)
    run = _load(workspace, run.id)
    ended = (run.target, FAILED, SKIPPED, PINNED)
    busy = [t for t in run.tasks if t.state not in ended and t.state != PLANNED]
    if busy:
        return
    ok = all(task.state in (run.target, PINNED) for task in run.tasks)
    propagations.finish_run(workspace.catalog, run.id, DONE if ok else FAILED)
    log(f"propagation {run.id} {'done' if ok else 'failed'}")


def _skip_below(workspace: Workspace, run: Run, name: str, why: str, log: Log) -> None:
    below = [name]
    while below:
        parent = below.pop()
        for task in run.tasks:
            if task.after == parent and task.state == PLANNED:
                local.skip(workspace, run, task, why, log)
                below.append(task.name)
