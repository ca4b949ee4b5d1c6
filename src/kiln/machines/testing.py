"""`kiln test`: an image's tests, run in a throw-away machine booted from it.

    launch (config values made up where none were given) -> wait for health
    -> each [tests] command inside the machine -> (converge) snapshot, re-apply the
    recipe's steps, snapshot, compare -> remove the machine -> record in the catalog

The test commands come from the image's ``org.kiln.tests`` label. Convergence needs the
recipe itself (its steps and their files): the one the image was baked from, unchanged.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln.catalog import Catalog, Image, TestRun, events
from kiln.catalog.lookup import ImageRow
from kiln.errors import BadInput, KilnError
from kiln.home import Home
from kiln.machines import converge, enter, health, launch, manage, provision
from kiln.machines.contract import commands_from_config, from_config
from kiln.machines.converge import Change
from kiln.recipe import RecipeFile, load_recipe
from kiln.store.stored import StoredImage
from kiln.times import iso

COMMAND_TIMEOUT = 300.0


@dataclass
class CommandResult:
    command: str
    ok: bool
    exit_code: int
    seconds: float
    output: str

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "output": self.output,
        }


@dataclass
class Report:
    image: str
    machine: str
    started: datetime
    ok: bool = False
    seconds: float = 0.0
    healthy_seconds: float | None = None
    health: dict[str, Any] | None = None
    results: list[CommandResult] = field(default_factory=list)
    converge: bool | None = None  # None: not checked
    changes: list[Change] = field(default_factory=list)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "machine": self.machine,
            "started": iso(self.started),
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "healthy_seconds": (
                round(self.healthy_seconds, 3) if self.healthy_seconds is not None else None
            ),
            "health": self.health,
            "results": [r.to_json() for r in self.results],
            "converge": self.converge,
            "changes": [c.to_json() for c in self.changes],
            "error": self.error,
        }


def _recipe_of(image: ImageRow) -> RecipeFile:
    path = Path(image.recipe_path)
    if not path.is_file():
        raise BadInput(
            f"the recipe {image.ref} was baked from is gone: {path}",
            hint="convergence re-applies the recipe's steps, so it needs the recipe",
        )
    recipe = load_recipe(path)
    if recipe.digest != image.recipe_digest:
        raise BadInput(
            f"{path} changed since {image.ref} was baked",
            hint=f"bake it again (kiln bake {path}) and test the new version",
        )
    return recipe


def _commands(image: ImageRow, config: dict[str, Any]) -> tuple[str, ...]:
    commands = commands_from_config(config)
    if commands is not None:
        return commands
    path = Path(image.recipe_path)  # baked before images carried their tests
    recipe = load_recipe(path) if path.is_file() else None
    if recipe is not None and recipe.digest == image.recipe_digest:
        return recipe.recipe.tests.commands
    return ()


def _machine_name(image: ImageRow) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", image.name)[:40].strip("-")
    return f"test-{name}-{image.version}-{secrets.token_hex(3)}"


def _run_commands(leader: int, commands: tuple[str, ...], report: Report) -> None:
    for command in commands:
        begin = time.monotonic()
        result = enter.shell(leader, command, timeout=COMMAND_TIMEOUT)
        report.results.append(
            CommandResult(
                command,
                result.returncode == 0,
                result.returncode,
                time.monotonic() - begin,
                result.stdout.decode(errors="replace"),
            )
        )


def _converge(
    home: Home,
    catalog: Catalog,
    launched: launch.Launched,
    recipe: RecipeFile,
    report: Report,
    log: Callable[[str], None],
) -> None:
    skip = converge.Skip.for_machine(launched.contract.state, recipe.recipe.seal.paths)
    root = launched.folder.root
    log("snapshot")
    before = converge.snapshot(root, skip)
    try:
        provision.apply_steps(launched.folder, launched.state, recipe, log)
    except KilnError as exc:
        report.converge = False
        report.error = f"re-applying the steps failed: {exc.message}"
        return
    log("snapshot again")
    after = converge.snapshot(root, skip, before)
    report.changes = converge.diff(before, after)
    report.converge = not report.changes


def _record(catalog: Catalog, image_id: int, report: Report) -> None:
    with catalog.session() as session:
        image = session.get(Image, image_id)
        if image is not None:
            events.record(
                session,
                "tested",
                image.name,
                image.version,
                image.digest,
                machine=report.machine,
                ok=report.ok,
                converge=report.converge,
            )
        session.add(
            TestRun(
                image_id=image_id,
                machine=report.machine,
                started=report.started,
                ok=report.ok,
                seconds=report.seconds,
                healthy_seconds=report.healthy_seconds,
                results=json.dumps([r.to_json() for r in report.results]),
                converge=report.converge,
                changes=json.dumps([c.to_json() for c in report.changes]),
                error=report.error,
            )
        )


def run(
    home: Home,
    catalog: Catalog,
    row: ImageRow,
    image: StoredImage,
    sets: tuple[str, ...] = (),
    config_file: Path | None = None,
    check_convergence: bool = False,
    log: Callable[[str], None] = lambda _message: None,
) -> Report:
    """Boot a throw-away machine from ``image`` (catalog row ``row``), run its tests, and
    with ``check_convergence`` re-apply its recipe's steps; record the run."""
    image_id, image_ref, machine = row.id, row.ref, _machine_name(row)
    config = image.config
    commands = _commands(row, config)
    recipe = _recipe_of(row) if check_convergence else None
    contract = from_config(config)
    health.check_tools(contract.health)
    report = Report(image_ref, machine, datetime.now(UTC))
    started = time.monotonic()
    log(f"booting {report.machine}")
    request = launch.Request(
        report.machine,
        sets,
        config_file,
        generate=True,
        throwaway=True,
        recipe_folder=recipe.folder if recipe else None,
    )
    try:
        launched = launch.run(request, image, image_id, home, catalog=lambda: catalog)
    except BadInput:
        raise  # config that breaks the contract: nothing was started, nothing to record
    except KilnError as exc:  # the machine did not boot: a failed test run
        report.error = exc.message
        return _finish(catalog, image_id, report, started)
    try:
        try:
            log("waiting for health")
            launch.wait(launched, contract.health)
            report.healthy_seconds = time.monotonic() - started
        finally:
            if launched.health is not None:
                report.health = launched.health.to_json()
        log("running tests")
        _run_commands(launched.state.leader.pid, commands, report)
        if recipe is not None:
            _converge(home, catalog, launched, recipe, report, log)
    except health.NotReady as exc:
        report.error = exc.message
    finally:
        log(f"removing {report.machine}")
        manage.rm(home, catalog, report.machine, with_volumes=True)
    return _finish(catalog, image_id, report, started)


def _finish(catalog: Catalog, image_id: int, report: Report, started: float) -> Report:
    report.seconds = time.monotonic() - started
    report.ok = (
        not report.error and all(r.ok for r in report.results) and report.converge is not False
    )
    _record(catalog, image_id, report)
    return report
