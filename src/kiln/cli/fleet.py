"""Groups: `kiln up` keeps the policy's groups at their size; `kiln group ls` and `show`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.groups import Group
from kiln.cli.output import console, json_flag, policy_option, print_json, progress, wide
from kiln.errors import KilnError


def _short(digest: str | None) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else "-"


def _say(text: str) -> None:
    console.print(escape(text), highlight=False)


def _render_up(data: dict[str, Any]) -> None:
    name = data["group"]
    head = f"{name}: {data['image']} is {data['ref']} ({_short(data['digest'])})"
    if not data["changed"]:
        _say(f"{head}; nothing to do: {len(data['kept'])} of {data['count']} members running")
    else:
        _say(head)
    for item in data["removed"]:
        why = "it was not running" if item["reason"] == "failed" else "beyond the count"
        _say(f"  removed {item['name']} ({item['image']}): {why}")
    for item in data["started"]:
        state = "healthy" if item["healthy"] else "NOT healthy"
        _say(
            f"  started {item['name']} from {item['image']}: {state} after "
            f"{item['seconds']:.2f}s ({item['health']})"
        )
    for item in data["not_started"]:
        _say(f"  could not start {item['name']}: {item['error']}")
    if data["changed"]:
        running = len(data["kept"]) + sum(1 for s in data["started"])
        _say(f"  {running} of {data['count']} members running")
    if data["elsewhere"]:
        names = ", ".join(f"{m['name']} ({m['image']})" for m in data["elsewhere"])
        _say(
            f"  {len(data['elsewhere'])} member(s) run another image: {names}; "
            f"kiln up leaves them as they are (kiln rollout {name} moves them)"
        )


@click.command()
@click.argument("group", required=False)
@policy_option("that declares the groups")
@json_flag
def up(group: str | None, policy_file: Path | None, as_json: bool) -> None:
    """Bring GROUP (every group of the policy when none is named) to its count.

    Members that are not running are replaced, missing ones start from the image the
    group's ref names now, members beyond the count go (newest first); members on another
    image are left to kiln rollout. Exit 1 when a new member is not healthy within the
    group's update.healthy_deadline: it is left running for a look."""
    from kiln.app import fleet as use
    from kiln.app.workspace import with_workspace

    with progress("kiln up", label_lines=False) as log:
        policy, results = with_workspace(use.up, group, policy_file, log)
    rows = [result.to_json() for result in results]
    if as_json:
        print_json({"policy": policy.describe(), "groups": rows})
    else:
        for row in rows:
            _render_up(row)
    unhealthy = [name for row in rows for name in row["unhealthy"]]
    failed = [item["name"] for row in rows for item in row["not_started"]]
    if unhealthy or failed:
        parts = []
        if unhealthy:
            parts.append(f"not healthy in time: {', '.join(unhealthy)} (left running for a look)")
        if failed:
            parts.append(f"did not start: {', '.join(failed)}")
        if unhealthy:
            first = unhealthy[0]
            hint = (
                f"kiln logs {first}; kiln group show {first.rsplit('-', 1)[0]}; kiln up replaces "
                "a member only once it stops (kiln rm it to have kiln up start it again)"
            )
        else:
            hint = "the error of each start is above; nothing of those members is left"
        raise KilnError("kiln up: " + "; ".join(parts), hint=hint)


@click.group(cls=Group)
def group() -> None:
    """Groups of machines the policy file declares ([groups.NAME])."""


@group.command("ls")
@policy_option("that declares the groups")
@json_flag
def ls(policy_file: Path | None, as_json: bool) -> None:
    """Every group: members wanted, running and healthy (one check of each now), its image."""
    from rich.table import Table

    from kiln.app import fleet as use
    from kiln.app.workspace import with_workspace

    policy, views = with_workspace(use.group_ls, policy_file)
    rows = [view.to_json(with_members=False) for view in views]
    if as_json:
        print_json(rows)
        return
    if not rows:
        where = policy.path or "no policy file"
        console.print(f"no groups ({escape(str(where))})", highlight=False)
        return
    table = Table(box=None, pad_edge=False)
    for title in ("GROUP", "WANTED", "RUNNING", "HEALTHY", "IMAGE", "NOW", "DIGEST", "ELSEWHERE"):
        table.add_column(title)
    for row in rows:
        count = row["count"]
        table.add_row(
            escape(row["group"]),
            str(count["wanted"]),
            str(count["running"]),
            str(count["healthy"]),
            escape(row["image"]),
            escape(row["ref"] or row["error"] or "-"),
            _short(row["digest"]),
            str(len(row["elsewhere"])),
        )
    wide.print(table)


@group.command("show")
@click.argument("name")
@policy_option("that declares the group")
@json_flag
def show(name: str, policy_file: Path | None, as_json: bool) -> None:
    """One group's members: index, version, digest, state, health now, address, ports,
    drift (paths changed against the image)."""
    from rich.table import Table

    from kiln.app import fleet as use
    from kiln.app.workspace import with_workspace

    _policy, view = with_workspace(use.group_show, name, policy_file)
    data = view.to_json()
    if as_json:
        print_json(data)
        return
    count = data["count"]
    _say(
        f"{name}: {data['image']} is {data['ref'] or data['error']} "
        f"({_short(data['digest'])}); {count['wanted']} wanted, {count['running']} running, "
        f"{count['healthy']} healthy"
    )
    table = Table(box=None, pad_edge=False)
    for title in ("MEMBER", "IMAGE", "DIGEST", "STATE", "HEALTH", "ADDRESS", "PORTS", "DRIFT"):
        table.add_column(title)
    for member in data["members"]:
        health = ("ok: " if member["healthy"] else "failing: ") + member["health"]
        drift = member["drift"]
        table.add_row(
            escape(member["name"]),
            escape(member["image"]),
            _short(member["digest"]),
            member["state"],
            escape(health),
            escape(member["address"] or "-"),
            escape(", ".join(member["ports"]) or "-"),
            "?" if drift is None else str(drift),
        )
    wide.print(table)


def register(cli: click.Group) -> None:
    cli.add_command(up)
    cli.add_command(group)
