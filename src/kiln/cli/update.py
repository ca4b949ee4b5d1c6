"""`kiln update NAME --to REF` and `kiln update NAME --rollback`: A/B slots of one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.output import console, err, json_flag, print_json


def _duration(_ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from kiln import durations
    from kiln.errors import BadInput

    if value is None:
        return None
    try:
        return durations.span(value, bare=True)
    except ValueError as exc:
        raise BadInput(f"--{param.name and param.name.replace('_', '-')}: {exc}") from None


def _slot(data: dict[str, Any]) -> str:
    return f"{data['image']} (slot {data['slot']})"


def _render(data: dict[str, Any]) -> None:
    name, to, origin = data["name"], data["to"], data["from"]
    proof = data["proof"]
    again = " (an interrupted switch, finished)" if data["resumed"] else ""
    if data["op"] == "update" and data["ok"]:
        console.print(
            f"{name}: {_slot(to)} is good: {proof['detail']}, held {proof['held_seconds']:.1f}s "
            f"(healthy {proof['healthy_seconds']:.2f}s after its start); "
            f"{_slot(origin)} is kept stopped as the fallback",
            highlight=False,
            markup=False,
        )
        return
    if data["op"] == "update":
        err.print(
            f"{name}: {_slot(to)} failed: {data['reason']}; switched back to {_slot(origin)}",
            highlight=False,
            markup=False,
        )
    elif data["resumed"] and data["active"] == origin:
        err.print(
            f"{name}: the interrupted update to {_slot(to)} is undone",
            highlight=False,
            markup=False,
        )
        again = ""
    back = data["back"] if data["op"] == "update" or data["resumed"] else proof
    active = _slot(data["active"])
    if back is not None and back["ok"]:
        line = f"{name}: {active} is active and healthy: {back['detail']}"
        if data["fallback"] is not None:
            line += f"; {_slot(data['fallback'])} is the fallback"
        (console if data["ok"] else err).print(escape(line + again), highlight=False)
    elif back is not None:
        err.print(escape(f"{name}: {active} is active but not healthy: {back['detail']}"))
    elif data["back_error"]:
        err.print(
            escape(f"{name}: {active} is active but did not start: {data['back_error']}"),
            highlight=False,
        )
        err.print(f"hint: kiln start {escape(name)} (give its secrets again with --set)")
    else:
        err.print(f"{name}: {active} is active, stopped (it was not running)", highlight=False)


@click.command()
@click.argument("name")
@click.option("--to", "ref", metavar="REF", help="the image to boot as the other slot")
@click.option(
    "--rollback",
    is_flag=True,
    help="return to the other slot (the fallback becomes active, the active the fallback); "
    "after a kiln killed half-way, bring the machine back",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="a config value of the new image (plain values carry over unless given); secrets "
    "are given again (KEY=- from standard input, KEY=@PATH from a file)",
)
@click.option(
    "--config-file",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='a TOML file of config values: key = "value"',
)
@click.option(
    "--good-after",
    default="10s",
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help="how long the health check must pass without a break before the new slot is good",
)
@click.option(
    "--deadline",
    callback=_duration,
    metavar="DURATION",
    help="how long after its start the new slot may take to pass its check first "
    "[default: the image's health timeout]",
)
@json_flag
def update(
    name: str,
    ref: str | None,
    rollback: bool,
    sets: tuple[str, ...],
    config_file: Path | None,
    good_after: float,
    deadline: float | None,
    as_json: bool,
) -> None:
    """Boot another image as slot B of a machine beside its slot A, or switch back.

    B gets A's volumes, network address and plain config (unless --set) and is tentative
    until its health check has held for --good-after; A then stays, stopped, as the
    fallback. If B fails its check or its deadline, kiln switches back to A (exit 1)."""
    from kiln.app import update as use
    from kiln.app.workspace import with_workspace
    from kiln.errors import BadInput

    if rollback == (ref is not None):
        raise BadInput(
            "give --to REF (an update) or --rollback, one of them",
            hint=f"kiln update {name} --to app:3, or kiln update {name} --rollback",
        )
    if rollback:
        outcome = with_workspace(use.rollback, name, sets, config_file)
    else:
        assert ref is not None
        outcome = with_workspace(use.update, name, ref, sets, config_file, good_after, deadline)
    data = outcome.to_json()
    if as_json:
        print_json(data)
    else:
        _render(data)
    if not outcome.ok:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(update)
