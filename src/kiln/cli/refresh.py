"""`kiln refresh`: parse, call kiln.app.refresh, render what was refreshed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.jobs import queue_option
from kiln.cli.output import console, err, json_flag, policy_option, print_json


def _summary(image: dict[str, Any]) -> str:
    updates = image["updates"]
    security = sum(1 for u in updates if u["security"])
    state = image["state"]
    made = f" -> {image['ref']}" if image["ref"] and image["ref"] != image["previous"] else ""
    line = (
        f"{image['previous']}{made}: {state} ({len(updates)} update"
        f"{'s' if len(updates) != 1 else ''}, {security} security)"
    )
    if image["error"]:
        line += f": {escape(image['error'])}"
    propagation = image["propagation"]
    if propagation and propagation.get("items"):
        done = ", ".join(
            f"{item['name']} {item.get('state', 'planned')}" for item in propagation["items"]
        )
        line += f"; propagated: {escape(done)}"
    return line


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option(
    "--security-only",
    is_flag=True,
    help="move only the packages with an update from a security suite (the lock's other "
    "packages stay)",
)
@click.option(
    "--promote",
    "channel",
    metavar="CHANNEL",
    help="promote each refreshed image (and what propagation rebakes) to CHANNEL, through "
    "its gates",
)
@click.option(
    "--parallel", type=int, default=1, show_default=True, help="propagation: at most N at once"
)
@click.option(
    "--max-failures",
    type=int,
    default=1,
    show_default=True,
    help="propagation: stop after K failures",
)
@click.option("--fetch", is_flag=True, help="fetch every Packages index now, whatever its age")
@policy_option("whose gates and [freshness] apply")
@queue_option("kiln.refresh")
@json_flag
def refresh(
    names: tuple[str, ...],
    security_only: bool,
    channel: str | None,
    parallel: int,
    max_failures: int,
    fetch: bool,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Rebake the images that have pending updates from an updated lock, test them, and
    promote them when their gates pass; what is built on them follows (kiln propagate).

    No NAME: every image name's newest version. Nothing outdated: nothing done. Exits 1
    when an image could not be refreshed, tested or promoted."""
    import sys

    from kiln.app import refresh as use_case
    from kiln.app.workspace import with_workspace

    options = use_case.Options(
        security_only=security_only,
        promote=channel,
        parallel=parallel,
        max_failures=max_failures,
        fetch=fetch,
        policy_file=policy_file,
    )

    def log(line: str) -> None:
        err.print(escape(line), highlight=False, soft_wrap=True)

    data = with_workspace(use_case.refresh, list(names), options, log)
    if as_json:
        print_json(data)
    else:
        for image in data["images"]:
            console.print(_summary(image), highlight=False, soft_wrap=True)
        if not data["images"]:
            what = "no security update pending" if security_only else "nothing outdated"
            console.print(f"{what}: nothing to refresh", highlight=False)
    if not data["ok"]:
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(refresh)
