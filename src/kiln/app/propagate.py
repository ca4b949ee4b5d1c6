"""`kiln propagate`: after an image changed, rebake what is built on it, in lineage order.

    plan (kiln.lifecycle.propagation) -> for each wave: for each item, at most N at once:
    (move a pin) -> rebase the lock -> bake -> kiln test -> promote through the gates

The plan comes from the catalog's plain-SQL lookup (image rows and the parent each bake
recorded as its recipe named it), so ``--dry-run`` never loads SQLAlchemy or pydantic.

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

import hashlib
import json
import os
import stat
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import locks, refs
from kiln.app import qualify, resolve
from kiln.app.workspace import Workspace, opened
from kiln.catalog.lookup import ImageRow, Lookup
from kiln.errors import BadInput, KilnError, from_os_error
from kiln.home import Home
from kiln.lifecycle import propagation
from kiln.lifecycle.propagation import Plan, Row
from kiln.times import precise

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from kiln.catalog.freshness import Propagation

Log = Callable[[str], None]

PLANNED, BAKING, BAKED, TESTED, PROMOTED = "planned", "baking", "baked", "tested", "promoted"
FAILED, SKIPPED, PINNED = "failed", "skipped", "pinned"
RUNNING, DONE = "running", "done"
MAX_PARALLEL = 64

IMAGES = (
    "SELECT id, name, version, parent_id, digest, recipe_path, status, recipe_digest FROM images"
)
BAKED_EVENTS = "SELECT name, version, detail FROM events WHERE kind = 'baked'"


def _now() -> datetime:
    return datetime.now(UTC)


# the plan


def _recorded(lookup: Lookup, latest: dict[str, Row]) -> dict[str, str | None]:
    """Each name's parent as the recipe of its newest version named it (its bake's event)."""
    wanted = {(row.name, row.version) for row in latest.values()}
    out: dict[str, str | None] = {}
    for name, version, detail in lookup.rows(BAKED_EVENTS):
        if (name, version) not in wanted:
            continue
        try:
            value = json.loads(detail).get("parent_named")
        except (ValueError, AttributeError):
            value = None
        out[name] = value if isinstance(value, str) else None
    return out


def _small_file(path: str) -> bytes | None:
    """A regular file's bytes, None unless it is one of at most a recipe's size (one
    open: no FIFO waited on, no device read, no path resolved component by component)."""
    from kiln.recipe.limits import MAX_RECIPE_BYTES

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_RECIPE_BYTES:
            return None
        data = os.read(fd, MAX_RECIPE_BYTES + 1)
        return data if len(data) <= MAX_RECIPE_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


class Parents(Mapping[str, str | None]):
    """Each name's parent as its recipe names it now, found when the plan asks (only for
    the names it holds): what the newest version's bake recorded, unless the recipe file
    changed since (its sha256 is not the one baked); then the file's own ``parent``,
    read as TOML alone, bounded like any recipe (one that does not read says nothing:
    its bake reports why)."""

    def __init__(self, lookup: Lookup, latest: dict[str, Row]) -> None:
        self._latest = latest
        self._recorded = _recorded(lookup, latest)
        self._found: dict[str, str | None] = {}

    def __getitem__(self, name: str) -> str | None:
        if name not in self._found:
            self._found[name] = self._read(name)
        return self._found[name]

    def _read(self, name: str) -> str | None:
        row = self._latest.get(name)
        if row is None:
            raise KeyError(name)
        recorded = self._recorded.get(name)
        data = _small_file(row.recipe_path)
        if data is None:
            return recorded  # a recipe that is gone is the plan's to report
        if hashlib.sha256(data).hexdigest() == row.recipe_digest:
            return recorded
        try:
            image = tomllib.loads(data.decode()).get("image")
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            return None
        parent = image.get("parent") if isinstance(image, dict) else None
        return parent if isinstance(parent, str) else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)


def _folder(folder: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """Every recipe in ``folder`` by image name, and the parent each names."""
    from kiln.recipe import load_recipes
    from kiln.recipe.limits import recipe_paths

    if not folder.is_dir():
        raise BadInput(f"--recipes {folder} is not a folder", hint="give the recipes' folder")
    paths = [path for path in recipe_paths(folder) if path.name != "kiln.toml"]
    recipes: dict[str, str] = {}
    named: dict[str, str | None] = {}
    for recipe in load_recipes(paths):
        if recipe.name in recipes:
            raise BadInput(
                f"{folder}: two recipes make the image {recipe.name}: "
                f"{recipes[recipe.name]} and {recipe.path}",
                hint="one recipe per image name in the folder propagate reads",
            )
        recipes[recipe.name] = str(recipe.path)
        named[recipe.name] = recipe.recipe.image.parent
    return recipes, named


def _row(image: ImageRow) -> Row:
    return Row(
        image.id,
        image.name,
        image.version,
        image.parent_id,
        image.digest,
        image.recipe_path,
        recipe_digest=image.recipe_digest,
    )


def make_plan(
    workspace: Workspace,
    ref: str,
    to: str | None = None,
    recipes: Path | None = None,
    include_pinned: bool = False,
) -> Plan:
    """The plan for the change ``ref`` names (``base``: its newest version)."""
    if to is not None:
        from kiln.lifecycle.channels import check_name

        check_name(to)
    lookup = workspace.lookup
    origin = resolve.image(workspace, ref)
    rows = [Row(*row) for row in lookup.rows(IMAGES)]
    latest = propagation.newest(rows)
    named: Mapping[str, str | None] = Parents(lookup, latest)
    folder: dict[str, str] | None = None
    if recipes is not None:
        folder, named = _folder(recipes)
    heads = {
        (head.name, head.channel): head.image_id
        for head in lookup.head_rows()
        if head.image_id is not None
    }
    return propagation.plan(
        rows,
        _row(origin),
        named=named,
        recipes=folder,
        exists=os.path.isfile,
        heads=heads,
        to=to,
        include_pinned=include_pinned,
    )


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


def _tasks(found: Propagation) -> list[Task]:
    tasks = [
        Task(
            item.id,
            item.position,
            item.wave,
            item.name,
            item.recipe,
            item.parent,
            item.reason,
            item.state,
            item.ref,
            item.digest,
            item.details(),
        )
        for item in found.items
    ]
    names = {task.name for task in tasks}
    for task in tasks:
        task.after = task.parent if task.parent in names and task.parent != task.name else None
    return tasks


def _open_run(workspace: Workspace, plan: Plan, options: Options) -> Run:
    """The unfinished run of this origin and channel, or a new one with the plan's items."""
    from kiln.actor import actor
    from kiln.catalog.freshness import Propagation, PropagationItem

    channel = options.to or ""
    origin = plan.origin
    with workspace.catalog.session() as session:
        found = (
            session.query(Propagation)
            .filter_by(origin_digest=origin.digest, channel=channel)
            .filter(Propagation.state != DONE)
            .order_by(Propagation.id.desc())
            .first()
        )
        continued = found is not None
        if found is None:
            now = _now()
            found = Propagation(
                origin=origin.ref,
                origin_digest=origin.digest,
                channel=channel,
                state=RUNNING,
                created=now,
                actor=actor(),
                options=json.dumps(
                    {
                        "parallel": options.parallel,
                        "max_failures": options.max_failures,
                        "include_pinned": options.include_pinned,
                        "recipes": str(options.recipes) if options.recipes else None,
                    }
                ),
            )
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
                found.items.append(
                    PropagationItem(
                        position=item.position,
                        wave=item.wave,
                        name=item.name,
                        recipe=recipe,
                        parent=item.parent,
                        reason=item.reason,
                        state=PINNED if item.pinned else PLANNED,
                        detail=json.dumps(detail),
                        updated=now,
                    )
                )
            session.add(found)
        else:
            found.state = RUNNING
            found.finished = None
        session.flush()
        run = Run(
            found.id,
            found.origin,
            found.origin_digest,
            options.to,
            continued,
            _tasks(found),
        )
    return run


def _save(
    session: Session, run: Run, task: Task, state: str, event: bool = False, **detail: Any
) -> None:
    from kiln.catalog import events
    from kiln.catalog.freshness import PropagationItem

    task.state = state
    task.detail.update(detail)
    item = session.get(PropagationItem, task.id)
    if item is None:
        raise KilnError(f"propagation {run.id} lost its item {task.name} while it ran")
    item.state, item.ref, item.digest = state, task.ref, task.digest
    item.detail = json.dumps(task.detail, sort_keys=True, default=str)
    item.updated = _now()
    if event:
        version = int(task.ref.rpartition(":")[2]) if task.ref else None
        events.record(
            session,
            "propagated",
            task.name,
            version,
            task.digest,
            origin=run.origin,
            origin_digest=run.origin_digest,
            channel=run.channel,
            propagation=run.id,
            state=state,
            reason=task.reason,
            error=task.detail.get("error"),
        )


def _commit(workspace: Workspace, run: Run, task: Task, state: str, **detail: Any) -> None:
    """One state change of an item, committed now; an end state is an event too."""
    end = state in (PROMOTED, FAILED, SKIPPED) or (state == TESTED and run.channel is None)
    if end:
        detail.setdefault("ended", precise())
    with workspace.catalog.session() as session:
        _save(session, run, task, state, event=end, **detail)


class Stop(KilnError):
    """An item's step failed: the item is failed with this message."""


def _parent_for_lock(
    workspace: Workspace, run: Run, task: Task, tasks: dict[str, Task], recipe_path: Path
) -> tuple[str, list[Any]]:
    """The digest and packages of the parent this item's bake will be on."""
    from kiln.app.bake import parent_of
    from kiln.recipe import load_recipe
    from kiln.recipe.lockfile import Deb

    recipe = load_recipe(recipe_path)
    if recipe.parent_recipe_path() is None and recipe.recipe.image.parent is not None:
        parent = parent_of(workspace, recipe, None)
        assert parent is not None
        return parent.image.digest, list(parent.packages)
    after = tasks.get(task.after) if task.after else None
    digest = after.digest if after is not None else run.origin_digest
    rows = workspace.lookup.rows("SELECT id FROM images WHERE digest = :d LIMIT 1", d=digest)
    if not rows:
        raise Stop(f"{task.name}: its new parent {digest} is not in the catalog")
    packages = [
        Deb(p.name, p.architecture, p.version, p.sha256)
        for p in workspace.lookup.packages(rows[0][0])
    ]
    return digest, packages


def _rebase_lock(
    workspace: Workspace, run: Run, task: Task, tasks: dict[str, Task], recipe_path: Path
) -> dict[str, Any] | None:
    """Move the recipe's lock onto the new parent, when it names another (written
    atomically beside the recipe); None when there is no lock or it fits already."""
    from kiln.recipe import lockfile
    from kiln.recipe.lockfile import Deb

    path = lockfile.lock_path(recipe_path)
    if not path.is_file():
        return None
    lock = lockfile.parse(path)
    digest, packages = _parent_for_lock(workspace, run, task, tasks, recipe_path)
    if lock.parent == digest:
        return None
    old: list[Deb] = []
    if lock.parent is not None:
        rows = workspace.lookup.rows(
            "SELECT id FROM images WHERE digest = :d LIMIT 1", d=lock.parent
        )
        if not rows:
            raise Stop(
                f"{path} names the parent {lock.parent}, which the catalog no longer has: "
                "the packages it inherited cannot be told from its own",
                hint=f"re-resolve it: kiln lock --update {recipe_path}",
            )
        old = [
            Deb(p.name, p.architecture, p.version, p.sha256)
            for p in workspace.lookup.packages(rows[0][0])
        ]
    new, changes = lockfile.rebase(lock, old, digest, packages)
    lockfile.write(path, new, recipe_path.name)
    return {
        "lock": str(path),
        "from": lock.parent,
        "to": digest,
        "changes": changes.to_json(),
    }


def _move_pin(workspace: Workspace, task: Task, tasks: dict[str, Task], pin: str) -> dict[str, str]:
    """Point a recipe that pins its parent by version or digest at the rebuilt parent:
    only the parent's value on its line changes (kiln.lifecycle.propagation.moved_pin)."""
    from kiln.atomic import write_atomic
    from kiln.recipe import load_recipe
    from kiln.recipe.limits import MAX_RECIPE_BYTES, read_regular

    path = Path(task.recipe)
    recipe = load_recipe(path)
    if recipe.recipe.image.parent != pin:
        return {}  # the recipe was changed since the plan: it says what it says
    ref = refs.parse(pin)
    after = tasks.get(task.after) if task.after else None
    target = resolve.image(workspace, after.ref if after is not None else ref.name)
    new = f"{target.name}@{target.digest}" if ref.digest else target.ref
    try:
        text = read_regular(path, MAX_RECIPE_BYTES, "recipe").decode()
    except UnicodeDecodeError:
        text = ""
    changed = propagation.moved_pin(text, recipe.lines.line_of(("image", "parent")), pin, new)
    if changed is None:
        raise Stop(
            f"{path}: its parent {pin} could not be moved to {new} by changing that value "
            "alone (it is not written once, as a plain string on its line)",
            hint=f'write parent = "{new}" yourself, then run kiln propagate again',
        )
    write_atomic(path, changed.encode())
    return {"from": pin, "to": new}


def _stages(log: Log) -> Log:
    """A bake's stage lines, each once it is over (each names its recipe already)."""
    from kiln.bake.result import ONGOING

    def say(line: str) -> None:
        if not line.endswith(ONGOING):
            log(line)

    return say


def _item(
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
        _commit(workspace, run, task, BAKING, started=started, ended=None, error=None, steps=steps)
        try:
            recipe_path = Path(task.recipe)
            if not recipe_path.is_file():
                raise Stop(f"its recipe is gone: {recipe_path}")
            steps["bake"] = {"started": precise()}
            pin = task.detail.get("move_pin")
            if isinstance(pin, str):
                moved = _move_pin(workspace, task, tasks, pin)
                if moved:
                    task.detail["pin_moved"] = moved
                    log(f"{task.name}: its parent pin moved from {moved['from']} to {moved['to']}")
            rebased = _rebase_lock(workspace, run, task, tasks, recipe_path)
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
            _commit(workspace, run, task, BAKED, steps=steps)
            hit = " (cache hit)" if result.cached else ""
            log(
                f"{task.name}: baked {result.ref}{hit}" + (f" {result.note}" if result.note else "")
            )
            steps["test"] = {}
            passed = qualify.test(workspace, result.ref, converge, steps["test"])
            _commit(workspace, run, task, TESTED, steps=steps)
            log(f"{task.name}: tested {result.ref}: {passed} passed")
            if run.channel is None:
                return TESTED
            promoted: dict[str, Any] = {}
            steps["promote"] = promoted
            qualify.promote(workspace, result.ref, run.channel, options.policy_file, promoted)
            _commit(workspace, run, task, PROMOTED, steps=steps)
            log(f"{task.name}: promoted {result.ref} to {run.channel}")
            return PROMOTED
        except (KilnError, OSError) as exc:
            error = exc if isinstance(exc, KilnError) else from_os_error(exc, "kiln propagate")
            message = error.message + (f" ({error.hint})" if error.hint else "")
            for step in steps.values():
                step.setdefault("ended", precise())
            _commit(workspace, run, task, FAILED, steps=steps, error=message)
            log(f"{task.name}: failed: {message}")
            return FAILED


def _skip(workspace: Workspace, run: Run, task: Task, why: str, log: Log) -> None:
    task.ref = task.digest = ""
    _commit(workspace, run, task, SKIPPED, error=why, started=None, steps={})
    log(f"{task.name}: skipped: {why}")


def propagate(workspace: Workspace, ref: str, options: Options, log: Log) -> Run | Plan:
    """Run the plan for ``ref``'s change (or continue the unfinished run of it); an
    empty plan is returned as it is, and nothing is recorded."""
    if not 1 <= options.parallel <= MAX_PARALLEL:
        raise BadInput(f"--parallel must be 1 to {MAX_PARALLEL}, not {options.parallel}")
    if options.max_failures < 1:
        raise BadInput(f"--max-failures must be at least 1, not {options.max_failures}")
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
        if not plan.items and not _unfinished(workspace, origin.digest, options.to or ""):
            return plan
        run = _open_run(workspace, plan, options)
        log(
            f"propagation {run.id} of {run.origin}"
            + (f" to {run.channel}" if run.channel else "")
            + (" (continued)" if run.continued else "")
            + f": {len(run.tasks)} items"
        )
        _execute(workspace, run, options, log)
        with workspace.catalog.session() as session:
            from kiln.catalog.freshness import Propagation

            row = session.get(Propagation, run.id)
            run.state = DONE if run.ok else FAILED
            if row is not None:
                row.state, row.finished = run.state, _now()
    return run


def _unfinished(workspace: Workspace, digest: str, channel: str) -> bool:
    rows = workspace.lookup.rows(
        "SELECT 1 FROM propagations WHERE origin_digest = :d AND channel = :c"
        " AND state != :done LIMIT 1",
        d=digest,
        c=channel,
        done=DONE,
    )
    return bool(rows)


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
                    _skip(workspace, run, task, f"its parent {parent.name} {parent.state}", say)
                elif run.stopped:
                    continue  # left planned
                elif parent is not None and parent.state not in done:
                    continue  # its parent did not finish: left for the next run
                elif "problem" in task.detail and not Path(task.recipe).is_file():
                    _skip(workspace, run, task, str(task.detail["problem"]), say)
                else:
                    ready.append(task)
            if ready and not run.stopped:
                say(f"wave {wave}: {', '.join(t.name for t in ready)}")
            running: dict[Future[str], Task] = {}
            while (ready and not run.stopped) or running:
                while ready and not run.stopped and len(running) < options.parallel:
                    task = ready.pop(0)
                    future = pool.submit(
                        _item, workspace.home, run, task, tasks, options, converge, say
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
