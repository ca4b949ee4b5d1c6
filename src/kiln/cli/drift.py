"""`kiln drift`: files a machine added, changed or deleted against its image.

Exit code 1 when any machine drifted (or could not be read), 0 when all are clean.
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from kiln.cli.output import console, err, json_flag, print_json

SIGNS = {"added": "+", "changed": "~", "deleted": "-", "metadata": "m"}


def _line(change: dict[str, Any]) -> str:
    detail = change["detail"] or (change["kind"] if change["change"] != "changed" else "")
    where = ""
    if change["layer"] is not None:
        where = f"  (image layer {change['layer']} changed on disk, behind the overlay)"
    return f"    {SIGNS[change['change']]} {change['path']}  {detail}{where}".rstrip()


def _render(data: dict[str, Any]) -> None:
    title = f"[bold]{escape(data['name'])}[/] ({escape(data['image'])}, {data['state']})"
    total = data["total"]
    if not total:
        console.print(f"{title}: no drift", highlight=False)
    else:
        paths = f"{total} path{'s' if total != 1 else ''}"
        console.print(f"{title}: {paths} drifted", highlight=False)
    for heading, key in (("content", "changes"), ("metadata only", "metadata")):
        if data[key]:
            console.print(f"  {heading}:", highlight=False)
            for change in data[key]:
                console.print(escape(_line(change)), highlight=False)
    if data["deep"] is not None:
        checked = sum(1 for layer in data["deep"] if layer["inventory"])
        console.print(
            f"  deep: {checked} of {len(data['deep'])} layers checked against their inventories",
            highlight=False,
        )
    for note in data["notes"]:
        err.print(f"  note: {escape(note)}", highlight=False)


@click.command()
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="every machine in KILN_HOME")
@click.option(
    "--deep",
    is_flag=True,
    help="also re-hash every file the machine sees against the file inventories recorded "
    "when its image's layers were baked (catches layers edited behind the overlay's back)",
)
@json_flag
def drift(name: str | None, every: bool, deep: bool, as_json: bool) -> None:
    """Files a machine added, changed or deleted against its image.

    Its state paths (volumes) and volatile paths (logs, caches, machine identity) are
    left out; mode and owner changes are listed apart from content changes. Exit code 1
    when there is drift, 0 when the machine is clean."""
    from kiln.app import drift as use
    from kiln.app.workspace import with_workspace

    if every == (name is not None):
        raise click.UsageError("give a machine's NAME, or --all")
    if name is not None:
        found = with_workspace(use.drift, name, deep)
        data = found.to_json()
        if as_json:
            print_json(data)
        else:
            _render(data)
        if found.total:
            raise SystemExit(1)
        return
    results = with_workspace(use.drift_all, deep)
    rows = [result.to_json() for result in results]
    if as_json:
        print_json(rows)
    else:
        if not rows:
            console.print("no machines", highlight=False)
        for row in rows:
            if "error" in row:
                err.print(f"[bold]{escape(row['name'])}[/]: error: {escape(row['error'])}")
            else:
                _render(row)
    if any("error" in row or row["total"] for row in rows):
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(drift)
