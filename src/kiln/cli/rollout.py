"""`kiln rollout GROUP`, and `kiln rollout status|history|abort GROUP`: parse, call
kiln.app.rollout, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.groups import Group
from kiln.cli.jobs import queue_option
from kiln.cli.output import console, json_flag, policy_option, print_json, progress, wide
from kiln.errors import KilnError

RUN = "_run"  # the command `kiln rollout GROUP` routes to: no group can be named so


class Rollout(Group):
    """``kiln rollout GROUP ...`` runs a rollout; ``kiln rollout status GROUP`` and the
    other words are subcommands (no group may be named status, history or abort)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [RUN, *args]
        return super().parse_args(ctx, args)


class _Run(click.Command):
    """The rollout itself: its usage line reads as it is typed, without the routing word."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        parent = ctx.parent.command_path if ctx.parent else "kiln rollout"
        formatter.write_usage(parent, "GROUP [OPTIONS]")


def _say(text: str) -> None:
    console.print(escape(text), highlight=False)


def _summary(data: dict[str, Any]) -> str:
    lowest = data["lowest_healthy"]
    low = (
        f"; fewest healthy members seen: {lowest} of {data['count']}" if lowest is not None else ""
    )
    reason = f": {data['reason']}" if data["reason"] else ""
    head = f"rollout {data['id']} of {data['group']} to {data['target_ref']}"
    return f"{head}: {data['state']}{reason}{low}"


@click.group(cls=Rollout, subcommand_metavar="GROUP [OPTIONS] | status|history|abort GROUP")
def rollout() -> None:
    """Move a group's members to a new image or config, a few at a time.

    kiln rollout GROUP [--to REF] [--set KEY=VALUE] moves GROUP to REF (default: what the
    group's image names now), resolved to a digest once; --resume continues a rollout cut
    short, --promote moves the rest after the canaries. Exit 1 when it fails or rolls
    back. Options of a rollout: --to REF, --set KEY=VALUE (repeatable), --resume,
    --promote, --policy FILE, --queue [QUEUE], --json ('kiln rollout GROUP --help' says
    more)."""


@rollout.command(RUN, cls=_Run, hidden=True)
@click.argument("group")
@click.option("--to", "to", metavar="REF", help="the image to move to (default: the group's)")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="a plain value members start with"
)
@click.option("--resume", is_flag=True, help="continue the group's unfinished rollout")
@click.option("--promote", is_flag=True, help="move the rest after the canaries")
@policy_option("that declares the group")
@queue_option("kiln.rollout")
@json_flag
def run(
    group: str,
    to: str | None,
    sets: tuple[str, ...],
    resume: bool,
    promote: bool,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Move GROUP's members to REF (default: what the group's image names now) and the
    group's config with each --set KEY=VALUE, replacing members, never editing one."""
    from kiln.app import rollout as use
    from kiln.app.workspace import with_workspace

    with progress("kiln rollout", label_lines=False) as log:
        report = with_workspace(
            use.rollout, group, to, list(sets), resume, promote, policy_file, log
        )
    data = report.to_json()
    if as_json:
        print_json(data)
    elif report.rollout is None:
        _say(f"{group}: nothing to do: all {report.members} members run {report.target_ref}")
    else:
        _say(_summary(data["rollout"]))
    if report.rollout is not None and not report.ok:
        state = report.rollout.state
        raise KilnError(
            f"rollout {report.rollout.id} of {group} {state}: {report.rollout.reason}",
            hint=f"'kiln rollout status {group}' shows each step"
            + (f"; 'kiln rollout {group} --resume' tries again" if state == "paused" else ""),
        )
    if (
        report.rollout is not None
        and report.rollout.state == "paused-for-promotion"
        and not as_json
    ):
        _say(f"the canaries are healthy: 'kiln rollout {group} --promote' moves the rest")


def _steps_table(steps: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("#", "PHASE", "ACTION", "MEMBER", "DIGEST", "STATE", "DETAIL", box=None)
    for step in steps:
        digest = (step["digest"] or "").removeprefix("sha256:")[:12] or "-"
        table.add_row(
            str(step["position"]),
            step["phase"],
            step["action"],
            step["member"] or "-",
            digest,
            step["state"],
            escape(step["detail"] or ""),
        )
    wide.print(table)


@rollout.command()
@click.argument("group")
@policy_option("that declares the group")
@json_flag
def status(group: str, policy_file: Path | None, as_json: bool) -> None:
    """GROUP's newest rollout, step by step, and its stable digest."""
    from kiln.app import rollout as use
    from kiln.app.workspace import with_workspace

    data = with_workspace(use.status, group, policy_file)
    if as_json:
        print_json(data)
        return
    _say(f"{group}: stable digest {data['stable'] or 'none yet'}")
    if data["rollout"] is None:
        _say(f"{group} has had no rollout")
        return
    _say(_summary(data["rollout"]))
    _steps_table(data["rollout"]["steps"])


@rollout.command()
@click.argument("group")
@policy_option("that declares the group")
@json_flag
def history(group: str, policy_file: Path | None, as_json: bool) -> None:
    """Every rollout of GROUP, newest first."""
    from rich.table import Table

    from kiln.app import rollout as use
    from kiln.app.workspace import with_workspace

    found = with_workspace(use.history, group, policy_file)
    rows = [item.to_json(steps=False) for item in found]
    if as_json:
        print_json(rows)
        return
    table = Table(
        "ID", "TARGET", "STATE", "STEPS", "LOWEST", "STABLE", "CREATED", "REASON", box=None
    )
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["target_ref"],
            row["state"],
            f"{row['steps_done']}/{row['steps_total']}",
            "-" if row["lowest_healthy"] is None else str(row["lowest_healthy"]),
            "yes" if row["stable"] else "-",
            row["created"] or "-",
            escape(row["reason"] or ""),
        )
    wide.print(table)


@rollout.command()
@click.argument("group")
@json_flag
def abort(group: str, as_json: bool) -> None:
    """End GROUP's unfinished rollout where it is (members stay as they are)."""
    from kiln.app import rollout as use
    from kiln.app.workspace import with_workspace

    found = with_workspace(use.abort, group)
    if as_json:
        print_json(found.to_json(steps=False))
    else:
        _say(_summary(found.to_json(steps=False)))


def register(cli: click.Group) -> None:
    cli.add_command(rollout)
