"""`kiln propagate`: parse, call kiln.app.propagate, render the plan or the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.jobs import queue_option
from kiln.cli.output import err, json_flag, policy_option, wide

# The use case loads when the command runs: a dry run over a large catalog stays quick.


def print_json(value: Any) -> None:
    """On one line, as kiln gc prints it: Python's JSON encoder is slower indenting
    (bench/propagate.py), and the plan of a large lineage holds thousands of items (jq .
    indents it)."""
    sys.stdout.write(json.dumps(value, sort_keys=True, default=str) + "\n")


def _plan_table(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("WAVE", "#", "IMAGE", "RECIPE", "PARENT", "WHY", "PINNED", box=None)
    for item in data["items"]:
        why = item["reason"] + (f"; {item['problem']}" if item["problem"] else "")
        table.add_row(
            str(item["wave"]),
            str(item["position"]),
            item["current"],
            escape(item["recipe"]),
            item["parent"],
            escape(why),
            escape(item["pin"]) if item["pinned"] else "-",
        )
    wide.print(table)


def _run_table(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("WAVE", "#", "IMAGE", "STATE", "NEW", "WHY", box=None)
    for item in data["items"]:
        detail = item["detail"]
        note = detail.get("error") or detail.get("pin") or item["reason"]
        if item["state"] == "planned" and data["stopped"]:
            note = f"not started: the run stopped at --max-failures ({item['reason']})"
        table.add_row(
            str(item["wave"]),
            str(item["position"]),
            item["name"],
            item["state"],
            item["ref"] or "-",
            escape(str(note)),
        )
    wide.print(table)


@click.command()
@click.argument("ref")
@click.option(
    "--to",
    "channel",
    metavar="CHANNEL",
    help="promote each rebuilt image to CHANNEL through its gates",
)
@click.option(
    "--parallel", type=int, default=1, metavar="N", show_default=True, help="images at once"
)
@click.option(
    "--max-failures",
    type=int,
    default=1,
    metavar="K",
    show_default=True,
    help="after this many failures nothing new starts",
)
@click.option("--dry-run", is_flag=True, help="print the plan; change nothing")
@click.option(
    "--recipes",
    type=click.Path(file_okay=False, path_type=Path),
    help="take each image's recipe from this folder, not the catalog's recipe paths",
)
@click.option(
    "--include-pinned",
    is_flag=True,
    help="also rebake images whose recipe pins a parent by version or digest (the pin moves)",
)
@click.option(
    "--spread",
    is_flag=True,
    help="hand each image to the workers of the shared catalog as a job of its own "
    "(kiln worker), instead of baking here; returns once the first ones are handed out",
)
@policy_option()
@queue_option("kiln.propagate")
@json_flag
def propagate(
    ref: str,
    channel: str | None,
    parallel: int,
    max_failures: int,
    dry_run: bool,
    recipes: Path | None,
    include_pinned: bool,
    spread: bool,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Rebake the images built on an earlier version of REF's name, in lineage order.

    Each is baked on its rebuilt parent, tested, and with --to promoted through the
    channel's gates. A run cut short is continued by the next one. Exit 1 when an image
    failed, was skipped or was left planned."""
    from kiln.app import propagate as use_case
    from kiln.app.workspace import with_workspace

    if dry_run:
        plan = with_workspace(
            use_case.make_plan, ref, channel, recipes.resolve() if recipes else None, include_pinned
        )
        data = plan.to_json()
        if as_json:
            print_json(data)
            return
        if not data["items"]:
            wide.print(f"nothing to propagate: nothing is built on an earlier {plan.origin.name}")
            return
        wide.print(f"plan for {plan.origin.ref} ({plan.origin.digest[:19]}):", highlight=False)
        _plan_table(data)
        return

    def log(line: str) -> None:
        err.print(escape(line), highlight=False)

    options = use_case.Options(
        to=channel,
        parallel=parallel,
        max_failures=max_failures,
        recipes=recipes.resolve() if recipes else None,
        include_pinned=include_pinned,
        policy_file=policy_file,
        spread=spread,
    )
    result = with_workspace(use_case.propagate, ref, options, log)
    if not isinstance(result, use_case.Run):
        if as_json:
            print_json({**result.to_json(), "propagation": None, "state": "done"})
        else:
            wide.print(f"nothing to propagate: nothing is built on an earlier {result.origin.name}")
        return
    data = result.to_json()
    if as_json:
        print_json(data)
    else:
        _run_table(data)
        counts = ", ".join(f"{n} {state}" for state, n in sorted(data["counts"].items()))
        wide.print(f"propagation {data['propagation']} {data['state']}: {counts}")
    if not result.ok and not spread:
        raise SystemExit(1)


@click.command(name="propagate-item", hidden=True)
@click.argument("run", type=int)
@click.argument("item", type=int)
@click.argument("name")
@click.option("--max-failures", type=int, default=1)
@policy_option()
@json_flag
def propagate_item(
    run: int, item: int, name: str, max_failures: int, policy_file: Path | None, as_json: bool
) -> None:
    """One item of a spread propagation, as a worker's job runs it (kiln propagate
    --spread); then the items waiting for it are handed out. Exit 1 when it failed."""
    from kiln.app import propagate_spread
    from kiln.app.workspace import with_workspace

    def log(line: str) -> None:
        err.print(escape(line), highlight=False)

    done = with_workspace(
        propagate_spread.run_item, run, item, name, max_failures, policy_file, log
    )
    if as_json:
        print_json(done)
    else:
        wide.print(f"propagation {run}: {name} {done['state']}", highlight=False)
    if done["state"] in ("failed", "skipped"):
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(propagate)
    group.add_command(propagate_item)
