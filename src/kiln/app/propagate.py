"""`kiln propagate`: after an image changed, rebake what is built on it, in lineage order.

    plan (kiln.lifecycle.propagation) -> for each wave: for each item, at most N at once:
    (move a pin) -> rebase the lock -> bake -> kiln test -> promote through the gates

The plan is made by kiln.app.propagation_plan from the catalog's plain-SQL lookup, so
``--dry-run`` never loads SQLAlchemy or pydantic; a recipe is moved onto its rebuilt
parent by kiln.app.repoint.

A run is one ``propagations`` row, keyed by the origin's digest and the ``--to`` channel,
with one ``propagation_items`` row per name of the plan. Every state change of an item
(planned -> baking -> baked -> tested -> promoted, or failed, skipped, pinned) is
committed when it happens, with its times in the item's detail, and an item's end is a
``propagated`` event. A run that did not finish (a crash, SIGKILL, ``--max-failures``) is
continued by the next ``kiln propagate`` of the same origin and channel: what reached its
end is not redone; an item cut short is done again (a bake that had finished is then a
cache hit, the same version).

Items of one wave run in threads: bake and test change no process-wide state (no cwd,
environment or signal handler; their commands are subprocesses; shared resources are
flocks, which two threads contend for like two processes), and each thread opens its
own Workspace, so no catalog connection or session is shared between threads. The test
machines of a run boot one at a time (kiln.app.qualify.BOOTS); bakes, whose nspawn runs
no systemd, still run N at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln import locks
from kiln.app import qualify, repoint
from kiln.app.propagation_plan import make_plan as make_plan
from kiln.app.repoint import Stop
from kiln.app.workspace import Workspace, opened
from kiln.catalog import propagations
from kiln.catalog.propagations import DONE, RUNNING, ItemRow, NewItem
from kiln.errors import BadInput, KilnError, from_os_error
from kiln.home import Home
from kiln.lifecycle import propagation
from kiln.lifecycle.propagation import Plan
from kiln.times import precise

Log = Callable[[str], None]

PLANNED, BAKING, BAKED, TESTED, PROMOTED = "planned", "baking", "baked", "tested", "promoted"
FAILED, SKIPPED, PINNED = "failed", "skipped", "pinned"
MAX_PARALLEL = 64


# a run


@dataclass
class Task:
    """One item of a run, as the run keeps it in memory and commits it."""

    id: int
    position: int
    wave: int
    name: str
    recipe: str
    parent: str
    reason: str
    state: str
    ref: str = ""
    digest: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "wave": self.wave,
            "name": self.name,
            "recipe": self.recipe,
            "parent": self.parent,
            "after": self.after,
            "reason": self.reason,
            "state": self.state,
            "ref": self.ref or None,
            "digest": self.digest or None,
            "detail": self.detail,
        }


@dataclass
class Run:
    id: int
    origin: str
    origin_digest: str
    channel: str | None
    continued: bool
    tasks: list[Task]
    state: str = RUNNING
    stopped: bool = False  # --max-failures was reached

    @property
    def target(self) -> str:
        return PROMOTED if self.channel else TESTED

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        return {
            "propagation": self.id,
            "origin": self.origin,
            "origin_digest": self.origin_digest,
            "channel": self.channel,
            "continued": self.continued,
            "state": self.state,
            "stopped": self.stopped,
            "counts": counts,
            "items": [task.to_json() for task in self.tasks],
        }

    @property
    def ok(self) -> bool:
        return all(task.state in (self.target, PINNED) for task in self.tasks)


@dataclass(frozen=True)
class Options:
    to: str | None = None
    parallel: int = 1
    max_failures: int = 1
    recipes: Path | None = None
    include_pinned: bool = False
    policy_file: Path | None = None
    spread: bool = False  # each item a job for the workers (kiln.app.propagate_spread)


def tasks_of(rows: list[ItemRow]) -> list[Task]:
    tasks = [Task(**asdict(item)) for item in rows]  # a row read back is a task again
    names = {task.name for task in tasks}
    for task in tasks:
        task.after = task.parent if task.parent in names and task.parent != task.name else None
    return tasks


def _items(plan: Plan, options: Options) -> list[NewItem]:
    """The plan's items as a new run records them."""
    items: list[NewItem] = []
    recipes: set[str] = set()
    for item in plan.items:
        # a recipe renamed since makes only its new name (one row per recipe); the
        # old name's row keeps the path in words: it is skipped, saying why
        recipe = f"{item.recipe} ({item.name})" if item.recipe in recipes else item.recipe
        recipes.add(item.recipe)
        detail: dict[str, Any] = {"current": item.current, "parent_named": item.named}
        if item.pinned:
            detail["pin"] = item.pin
        if item.problem:
            detail["problem"] = item.problem
        if options.include_pinned and propagation.pin_of(item.named):
            detail["move_pin"] = item.named
        state = PINNED if item.pinned else PLANNED
        items.append(
            NewItem(
                item.position, item.wave, item.name, recipe, item.parent, item.reason, state, detail
            )
        )
    return items


def _open_run(workspace: Workspace, plan: Plan, options: Options) -> Run:
    """The unfinished run of this origin and channel, or a new one with the plan's items."""
    found = propagations.open_run(
        workspace.catalog,
        plan.origin.ref,
        plan.origin.digest,
        options.to or "",
        {
            "parallel": options.parallel,
            "max_failures": options.max_failures,
            "include_pinned": options.include_pinned,
            "recipes": str(options.recipes) if options.recipes else None,
        },
        _items(plan, options),
    )
    return Run(
        found.id,
        found.origin,
        found.origin_digest,
        options.to,
        found.continued,
        tasks_of(found.items),
    )


def commit(workspace: Workspace, run: Run, task: Task, state: str, **detail: Any) -> None:
    """One state change of an item, committed now; an end state is an event too."""
    end = state in (PROMOTED, FAILED, SKIPPED) or (state == TESTED and run.channel is None)
    if end:
        detail.setdefault("ended", precise())
    task.state = state
    task.detail.update(detail)
    event = None
    if end:
        event = {
            "origin": run.origin,
            "origin_digest": run.origin_digest,
            "channel": run.channel,
            "propagation": run.id,
            "state": state,
            "reason": task.reason,
            "error": task.detail.get("error"),
        }
    propagations.save_item(
        workspace.catalog, run.id, task.id, task.name, state, task.ref, task.digest, task.detail,
        event,
    )  # fmt: skip


def _stages(log: Log) -> Log:
    """A bake's stage lines, each once it is over (each names its recipe already)."""
    from kiln.bake.result import ONGOING

    def say(line: str) -> None:
        if not line.endswith(ONGOING):
            log(line)

    return say


def run_item(
    home: Home,
    run: Run,
    task: Task,
    tasks: dict[str, Task],
    options: Options,
    converge: bool,
    log: Log,
) -> str:
    """Rebake, test and promote one item; every state change committed as it happens."""
    from kiln.app.bake import Options as BakeOptions
    from kiln.app.bake import bake_path

    with opened(home) as workspace:
        steps: dict[str, Any] = {}
        started = precise()
        task.ref = task.digest = ""
        for earlier in ("lock_rebased", "pin_moved"):  # of an attempt before this one
            task.detail.pop(earlier, None)
        commit(workspace, run, task, BAKING, started=started, ended=None, error=None, steps=steps)
        try:
            recipe_path = Path(task.recipe)
            if not recipe_path.is_file():
                raise Stop(f"its recipe is gone: {recipe_path}")
            steps["bake"] = {"started": precise()}
            after = tasks.get(task.after) if task.after else None
            pin = task.detail.get("move_pin")
            if isinstance(pin, str):
                moved = repoint.move_pin(
                    workspace, recipe_path, pin, after.ref if after is not None else None
                )
                if moved:
                    task.detail["pin_moved"] = moved
                    log(f"{task.name}: its parent pin moved from {moved['from']} to {moved['to']}")
            rebuilt = after.digest if after is not None else run.origin_digest
            rebased = repoint.rebase_lock(workspace, task.name, recipe_path, rebuilt)
            if rebased is not None:
                task.detail["lock_rebased"] = rebased
                log(f"{task.name}: {Path(rebased['lock']).name} rebased onto {rebased['to'][:19]}")
            log(f"{task.name}: baking {recipe_path}")
            results = bake_path(workspace, recipe_path, BakeOptions(), _stages(log))
            result = results[-1]
            if result.name != task.name:
                raise Stop(f"its recipe {recipe_path} makes {result.name} now, not {task.name}")
            task.ref, task.digest = result.ref, result.digest
            steps["bake"].update(ended=precise(), cached=result.cached, seconds=result.seconds)
            commit(workspace, run, task, BAKED, steps=steps)
            hit = " (cache hit)" if result.cached else ""
            log(
                f"{task.name}: baked {result.ref}{hit}" + (f" {result.note}" if result.note else "")
            )
            steps["test"] = {}
            passed = qualify.test(workspace, result.ref, converge, steps["test"])
            commit(workspace, run, task, TESTED, steps=steps)
            log(f"{task.name}: tested {result.ref}: {passed} passed")
            if run.channel is None:
                return TESTED
            promoted: dict[str, Any] = {}
            steps["promote"] = promoted
            qualify.promote(workspace, result.ref, run.channel, options.policy_file, promoted)
            commit(workspace, run, task, PROMOTED, steps=steps)
            log(f"{task.name}: promoted {result.ref} to {run.channel}")
            return PROMOTED
        except (KilnError, OSError) as exc:
            error = exc if isinstance(exc, KilnError) else from_os_error(exc, "kiln propagate")
            message = error.message + (f" ({error.hint})" if error.hint else "")
            for step in steps.values():
                step.setdefault("ended", precise())
            commit(workspace, run, task, FAILED, steps=steps, error=message)
            log(f"{task.name}: failed: {message}")
            return FAILED


def skip(workspace: Workspace, run: Run, task: Task, why: str, log: Log) -> None:
    task.ref = task.digest = ""
    commit(workspace, run, task, SKIPPED, error=why, started=None, steps={})
    log(f"{task.name}: skipped: {why}")


def propagate(workspace: Workspace, ref: str, options: Options, log: Log) -> Run | Plan:
    """Run the plan for ``ref``'s change (or continue the unfinished run of it); an
    empty plan is returned as it is, and nothing is recorded."""
    if not 1 <= options.parallel <= MAX_PARALLEL:
        raise BadInput(f"--parallel must be 1 to {MAX_PARALLEL}, not {options.parallel}")
    if options.max_failures < 1:
        raise BadInput(f"--max-failures must be at least 1, not {options.max_failures}")
    if options.spread:  # the job queue first: nothing is planned for a catalog without one
        from kiln.app.jobs import require_queue

        require_queue(workspace.home, "--spread")
    if options.to is not None:  # a channel the policy does not define: refused before any bake
        qualify.converge_wanted(workspace, options.to, options.policy_file)
    plan = make_plan(workspace, ref, options.to, options.recipes, options.include_pinned)
    origin = plan.origin
    lock = workspace.home.locks / f"propagate-{origin.digest[7:23]}-{options.to or '-'}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = locks.hold(lock, wait=False)
    if held is None:
        raise KilnError(
            f"another kiln propagate of {origin.ref} to {options.to or 'no channel'} is running",
            hint="wait for it; a run cut short is continued by the next kiln propagate",
        )
    with held:
        unfinished = propagations.has_unfinished(workspace.lookup, origin.digest, options.to or "")
        if not plan.items and not unfinished:
            return plan
        run = _open_run(workspace, plan, options)
        log(
            f"propagation {run.id} of {run.origin}"
            + (f" to {run.channel}" if run.channel else "")
            + (" (continued)" if run.continued else "")
            + f": {len(run.tasks)} items"
        )
        if options.spread:
            from kiln.app import propagate_spread

            propagate_spread.hand_out(workspace, run, options, log)
            return run
        _execute(workspace, run, options, log)
        run.state = DONE if run.ok else FAILED
        propagations.finish_run(workspace.catalog, run.id, run.state)
    return run


def _execute(workspace: Workspace, run: Run, options: Options, log: Log) -> None:
    """Wave by wave, at most ``parallel`` items at once; after ``max_failures`` failures
    nothing new starts (what is left stays planned for the next run)."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    tasks = {task.name: task for task in run.tasks}
    converge = qualify.converge_wanted(workspace, run.channel, options.policy_file)
    waves: dict[int, list[Task]] = {}
    for task in run.tasks:
        waves.setdefault(task.wave, []).append(task)
    failures = 0
    done = {run.target}
    with ThreadPoolExecutor(max_workers=options.parallel) as pool:
        for wave in sorted(waves):
            ready: list[Task] = []
            for task in sorted(waves[wave], key=lambda t: t.position):
                if task.state in done or task.state == PINNED:
                    continue
                parent = tasks.get(task.after) if task.after else None
                if parent is not None and parent.state in (FAILED, SKIPPED):
                    skip(workspace, run, task, f"its parent {parent.name} {parent.state}", say)
                elif run.stopped:
                    continue  # left planned
                elif parent is not None and parent.state not in done:
                    continue  # its parent did not finish: left for the next run
                elif "problem" in task.detail and not Path(task.recipe).is_file():
                    skip(workspace, run, task, str(task.detail["problem"]), say)
                else:
                    ready.append(task)
            if ready and not run.stopped:
                say(f"wave {wave}: {', '.join(t.name for t in ready)}")
            running: dict[Future[str], Task] = {}
            while (ready and not run.stopped) or running:
                while ready and not run.stopped and len(running) < options.parallel:
                    task = ready.pop(0)
                    future = pool.submit(
                        run_item, workspace.home, run, task, tasks, options, converge, say
                    )
                    running[future] = task
                finished, _pending = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    if future.result() == FAILED:
                        failures += 1
                        if failures >= options.max_failures:
                            run.stopped = True
            if run.stopped and ready:
                say(
                    f"stopped after {failures} failure{'s' if failures != 1 else ''} "
                    f"(--max-failures {options.max_failures}): "
                    f"{', '.join(t.name for t in ready)} left planned"
                )
                ready.clear()
