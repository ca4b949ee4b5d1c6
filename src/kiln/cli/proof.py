"""`kiln rebuild REF --prove`: bake an image and its parents again from scratch and show
whether the digest is the same. Exit code 0 when it is, 1 when it is not (or the mirror
lacks a locked version), 2 when the proof cannot start ("not proven: cannot rebuild")."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from kiln.cli.build import mirror_option, verbose_flag
from kiln.cli.jobs import queue_option
from kiln.cli.output import console, json_flag, print_json, progress


def _say(text: str) -> None:
    console.print(text, highlight=False)


def _diff_lines(diff: dict[str, Any]) -> None:
    files, packages = diff["files"], diff["packages"]
    for sign, key in (("+", "added"), ("~", "modified"), ("-", "deleted")):
        for path in files[key]:
            _say(f"    {sign} {escape(path)}")
    for package in packages["added"]:
        _say(f"    + package {package['name']} {package['version']}")
    for package in packages["removed"]:
        _say(f"    - package {package['name']} {package['version']}")
    for package in packages["changed"]:
        _say(f"    ~ package {package['name']} {package['old']} -> {package['new']}")
    for key in diff["config"]:
        _say(f"    ~ config {escape(key)}")


def _render(data: dict[str, Any]) -> None:
    for link in data["chain"]:
        if link["rebuilt"] is None:
            _say(f"  {link['ref']}  {escape(link['note'] or 'not rebuilt')}")
            continue
        same = "[green]same digest[/]" if link["ok"] else "[red]different digest[/]"
        _say(f"  {link['ref']}  {link['digest'][:19]} -> {link['rebuilt'][:19]}  {same}")
        if link["diff"] is not None:
            _diff_lines(link["diff"])
    for changed in data["inputs"]:
        if changed["found"] is None:
            text = f"{changed['input']} ({changed['path']}) is missing, was {changed['expected']}"
        else:
            text = (
                f"{changed['input']} ({changed['path']}) changed: baked from "
                f"{changed['expected']}, now {changed['found']}"
            )
        _say(f"  {escape(changed['recipe'])}: {escape(text)}")
    if data["unserved"]:
        _say(f"  the mirror no longer serves {len(data['unserved'])} locked version(s):")
        for deb in data["unserved"]:
            _say(f"    {deb['name']} {deb['version']} ({deb['architecture']})")
    if data["error"] and not data["unserved"]:
        _say(f"  [red]error:[/] {escape(data['error'])}")
    if data["ok"]:
        _say(f"[green]proven[/] {data['ref']}: rebuilt to {data['digest'][:19]} again")
    elif data["cannot"]:
        _say(f"[red]not proven[/] {data['ref']}: cannot rebuild ({escape(data['cannot'])})")
    else:
        _say(f"[red]not proven[/] {data['ref']}: the rebuild did not give {data['digest'][:19]}")


@click.command()
@click.argument("ref")
@click.option(
    "--prove",
    is_flag=True,
    help="bake REF and its parents again in a fresh KILN_HOME from their stored locks, "
    "compare the digests and record the result",
)
@click.option(
    "--no-package-cache",
    is_flag=True,
    help="fetch every package from the mirror, not the package cache, and name each locked "
    "version the mirror no longer serves",
)
@mirror_option
@verbose_flag
@queue_option("kiln.prove")
@json_flag
def rebuild(
    ref: str, prove: bool, no_package_cache: bool, mirror: str | None, verbose: bool, as_json: bool
) -> None:
    """Prove that REF can still be rebuilt: bake it and its parent chain from scratch, from
    the locks and source archives they were baked with, and compare the digests (exit 1
    when they differ, 2 when the proof cannot start)."""
    from kiln.app import proof
    from kiln.app.workspace import opened

    with progress("proving", verbose, label_lines=False) as log, opened() as workspace:
        result = proof.rebuild(
            workspace, ref, prove, package_cache=not no_package_cache, mirror=mirror, log=log
        )
    data = result.to_json()
    if as_json:
        print_json(data)
    else:
        _render(data)
    if result.cannot:
        raise SystemExit(2)
    if not result.ok:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(rebuild)
