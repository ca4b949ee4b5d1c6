"""`kiln outdated`: which images have packages with a newer version, security ones apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.output import console, err, json_flag, policy_option, wide


def _print_json(data: dict[str, Any]) -> None:
    """The report as JSON, one image per line: a thousand images with their updates are
    encoded by the standard library's C encoder (an indented dump takes seconds)."""
    import json
    import sys

    images = data["images"]
    rest = {key: value for key, value in data.items() if key != "images"}
    out = ['{\n  "images": [']
    out += [
        "    " + json.dumps(image, sort_keys=True) + ("," if n < len(images) - 1 else "")
        for n, image in enumerate(images)
    ]
    out.append("  ]" + ("," if rest else ""))
    body = json.dumps(rest, indent=2, sort_keys=True)[1:-1].strip("\n")
    out += [body, "}"] if rest else ["}"]
    sys.stdout.write("\n".join(out) + "\n")


def _say(text: str) -> None:
    console.print(text, highlight=False)


RICH_ROWS = 1000  # past this many rows rich takes seconds: plain aligned columns instead
COLUMNS = ("IMAGE", "CHANNELS", "PACKAGE", "INSTALLED", "AVAILABLE", "SUITE")


def _rows(images: list[dict[str, Any]]) -> list[tuple[list[str], bool]]:
    out = []
    for image in images:
        channels = ", ".join(image["channels"]) or "-"
        for u in image["updates"]:
            suite = u["suite"] + (" (security)" if u["security"] else "")
            row = [image["ref"], channels, u["package"], u["installed"], u["available"], suite]
            out.append((row, bool(u["security"])))
    return out


def _table(images: list[dict[str, Any]]) -> None:
    rows = _rows(images)
    if len(rows) > RICH_ROWS:
        import sys

        widths = [max(len(c), *(len(r[n]) for r, _ in rows)) for n, c in enumerate(COLUMNS)]
        lines = [" ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
        lines += [
            " ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r, _ in rows
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    from rich.table import Table

    table = Table(*COLUMNS, box=None)
    for row, security in rows:
        cells = [escape(cell) for cell in row]
        if security:
            cells[-1] = f"[red]{cells[-1]}[/]"
        table.add_row(*cells)
    wide.print(table)


@click.command()
@click.argument("targets", nargs=-1, metavar="[NAME|REF...]")
@click.option("--fetch", is_flag=True, help="fetch every Packages index now, whatever its age")
@click.option("--refresh", "refresh_alias", is_flag=True, hidden=True)  # --fetch's old name
@click.option("--offline", is_flag=True, help="never fetch: the cached indexes only")
@policy_option("whose [freshness] index_max_age applies")
@json_flag
def outdated(
    targets: tuple[str, ...],
    fetch: bool,
    refresh_alias: bool,
    offline: bool,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Packages in images that have a newer version in the suites the image's own apt
    sources name (the host's when it names none); security updates marked.

    No argument: every channel head and each name's newest version. Exits 1 when any
    image is outdated, 0 when none is."""
    from kiln.app import freshness
    from kiln.app.workspace import with_workspace
    from kiln.errors import BadInput

    if refresh_alias:
        err.print("kiln outdated: --refresh is now called --fetch", highlight=False)
    fetch = fetch or refresh_alias
    if fetch and offline:
        raise BadInput("--fetch fetches and --offline never does: give one of them")
    data = with_workspace(freshness.outdated, list(targets), fetch, offline, policy_file)
    if as_json:
        _print_json(data)
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
        for image in images:
            for note in image["notes"]:
                _say(f"{image['ref']}: note: {escape(note['message'])}")
        if not data["outdated"]:
            _say(f"{len(images)} image{'s' if len(images) != 1 else ''} checked: none outdated")
    if data["outdated"]:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(outdated)
