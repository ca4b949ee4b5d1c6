"""`kiln network ls|create|rm`: the private networks machines of this home join."""

from __future__ import annotations

from typing import Any

import click

from kiln.cli.output import console, json_flag, print_json, wide


@click.group()
def network() -> None:
    """Private networks: a /24 and a bridge each, machines reach each other by name."""


def _members(data: dict[str, Any]) -> str:
    members = data["members"]
    return ", ".join(f"{name}={m['address']}" for name, m in members.items()) or "-"


@network.command("ls")
@json_flag
def ls(as_json: bool) -> None:
    """List the networks: subnet, bridge, machines and their addresses."""
    from rich.table import Table

    from kiln.app import network as use
    from kiln.app.workspace import with_workspace

    rows = with_workspace(use.ls)
    if as_json:
        print_json(rows)
        return
    table = Table("NAME", "SUBNET", "BRIDGE", "GATEWAY", "MACHINES", box=None)
    for row in rows:
        table.add_row(
            row["name"],
            row["subnet"] or "-",
            row["bridge"],
            row["gateway"] or "-",
            _members(row),
        )
    wide.print(table)


@network.command("create")
@click.argument("name")
@json_flag
def create(name: str, as_json: bool) -> None:
    """Make a network; its first machine gives it a subnet and a bridge."""
    from kiln.app import network as use
    from kiln.app.workspace import with_workspace

    data = with_workspace(use.create, name)
    if as_json:
        print_json(data)
    else:
        console.print(f"created network {name}", highlight=False)


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@json_flag
def rm(names: tuple[str, ...], as_json: bool) -> None:
    """Remove networks; refused (exit 2) while machines are attached."""
    from kiln.app import network as use
    from kiln.app.workspace import opened

    removed = []
    with opened() as workspace:
        for name in names:
            removed.append(use.rm(workspace, name))
            if not as_json:
                console.print(f"removed network {name}", highlight=False)
    if as_json:
        print_json(removed)


def register(group: click.Group) -> None:
    group.add_command(network)
