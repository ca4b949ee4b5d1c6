"""`kiln outdated`: which images have packages with a newer version, security ones apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.output import console, print_json, wide


def _say(text: str) -> None:
    console.print(text, highlight=False)


def _table(images: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("IMAGE", "CHANNELS", "PACKAGE", "INSTALLED", "AVAILABLE", "SUITE", box=None)
    for image in images:
        channels = ", ".join(image["channels"]) or "-"
        for update in image["updates"]:
            suite = escape(update["suite"])
            if update["security"]:
                suite = f"[red]{suite} (security)[/]"
            table.add_row(
                image["ref"],
                channels,
                escape(update["package"]),
                escape(update["installed"]),
                escape(update["available"]),
                suite,
            )
    wide.print(table)


@click.command()
@click.argument("targets", nargs=-1, metavar="[NAME|REF...]")
@click.option("--refresh", is_flag=True, help="fetch every Packages index again first")
@click.option("--offline", is_flag=True, help="never fetch: the cached indexes only")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the policy file ([freshness] index_max_age; default: KILN_POLICY, ./kiln.toml, "
    "$KILN_HOME/kiln.toml)",
)
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def outdated(
    targets: tuple[str, ...], refresh: bool, offline: bool, policy_file: Path | None, as_json: bool
) -> None:
    """Packages in images that have a newer version in the suites the image's own apt
    sources name (the host's when it names none); security updates marked.

    No argument: every channel head and each name's newest version. Exits 1 when any
    image is outdated, 0 when none is."""
    from kiln.app import freshness
    from kiln.app.workspace import with_workspace
    from kiln.errors import BadInput

    if refresh and offline:
        raise BadInput("--refresh fetches and --offline never does: give one of them")
    data = with_workspace(freshness.outdated, list(targets), refresh, offline, policy_file)
    if as_json:
        print_json(data)
    else:
        images = data["images"]
        stale = [i for i in images if i["sources"]["checked"] is None]
        if any(i["updates"] for i in images):
            _table([i for i in images if i["updates"]])
        for image in images:
            counts = image["counts"]
            if counts["updates"]:
                _say(
                    f"{image['ref']}: {counts['security']} security, {counts['other']} other "
                    f"update{'s' if counts['other'] != 1 else ''}"
                )
        for image in stale:
            _say(f"{image['ref']}: no index of its sources is cached (run without --offline)")
        if not data["outdated"]:
            _say(f"{len(images)} image{'s' if len(images) != 1 else ''} checked: none outdated")
    if data["outdated"]:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(outdated)
