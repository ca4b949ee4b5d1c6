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
    schema = found.schema
    console.print(f"catalog  {schema.url}", highlight=False)
    console.print(f"current  {schema.current or '-'}", highlight=False)
    console.print(f"head     {schema.head}", highlight=False)
    console.print(f"state    {STATES[schema.state]}", highlight=False)
    if found.schema.pending:
        console.print(f"pending  {', '.join(found.schema.pending)}", highlight=False)
    console.print(f"jobs     {_jobs_state(found.jobs.to_json())}", highlight=False)


def _jobs_state(jobs: dict[str, object]) -> str:
    if not jobs["supported"]:
        return "none: an SQLite catalog has no job queue (docs/sharing.md)"
    if not jobs["installed"]:
        return f"schema {jobs['schema']} not installed: run 'kiln catalog upgrade'"
    return f"schema {jobs['schema']} installed (procrastinate {jobs['procrastinate']})"


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
    if done.jobs_installed:
        console.print(
            f"job queue installed in schema {done.jobs.to_json()['schema']}", highlight=False
        )


def register(group: click.Group) -> None:
    group.add_command(catalog)
