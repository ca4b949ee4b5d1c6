"""Catalog commands: `kiln catalog status` and `kiln catalog upgrade`."""

from __future__ import annotations

import click

from kiln.cli.groups import Group
from kiln.cli.output import console, json_flag, print_json

STATES = {
    "empty": "empty: kiln creates its tables on first use",
    "unversioned": "made by kiln 0.1.0, before migrations: upgrade stamps it, then migrates",
    "behind": "older than this kiln: kiln upgrades it when it opens it, or run "
    "'kiln catalog upgrade'",
    "current": "up to date",
    "ahead": "upgraded by a newer kiln: use that version of kiln",
}


@click.group(cls=Group)
def catalog() -> None:
    """Look at and upgrade the catalog's schema (KILN_CATALOG_URL, else KILN_HOME's SQLite).

    kiln upgrades an older catalog itself when it opens it; `kiln catalog upgrade` does it
    on purpose, e.g. for a shared PostgreSQL catalog before a team moves to a new kiln."""


@catalog.command()
@json_flag
def status(as_json: bool) -> None:
    """Show the catalog's schema revision beside the newest this kiln knows (changes
    nothing)."""
    from kiln.app.catalog import catalog_status
    from kiln.app.workspace import with_workspace

    found = with_workspace(catalog_status)
    if as_json:
        print_json(found.to_json())
        return
    console.print(f"catalog  {found.url}", highlight=False)
    console.print(f"current  {found.current or '-'}", highlight=False)
    console.print(f"head     {found.head}", highlight=False)
    console.print(f"state    {STATES[found.state]}", highlight=False)
    if found.pending:
        console.print(f"pending  {', '.join(found.pending)}", highlight=False)


@catalog.command()
@json_flag
def upgrade(as_json: bool) -> None:
    """Bring the catalog to this kiln's schema (one transaction, under the catalog's write
    lock: other kiln processes wait)."""
    from kiln.app.catalog import FIRST, upgrade_catalog
    from kiln.app.workspace import with_workspace

    done = with_workspace(upgrade_catalog)
    if as_json:
        print_json(done.to_json())
        return
    if done.before.state == "current":
        console.print(f"catalog already at {done.after}", highlight=False)
    elif done.before.state == "empty":
        console.print(f"catalog created at {done.after}", highlight=False)
    else:
        console.print(
            f"catalog upgraded from {done.before.current or 'kiln 0.1.0 (stamped ' + FIRST + ')'} "
            f"to {done.after} "
            f"({', '.join(done.applied)})",
            highlight=False,
        )


def register(group: click.Group) -> None:
    group.add_command(catalog)
