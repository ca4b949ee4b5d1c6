"""Machine commands: run, start, ps, exec, logs, stop, rm, test."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.jobs import queue_option
from kiln.cli.output import console, err, json_flag, print_json, progress, wide

# Commands import their services when they run: `kiln run` is on the clock (time to healthy).

set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="a config value of the image's runtime contract (repeatable; wins over --config). "
    "KEY=- reads the value from standard input, KEY=@PATH from a file (one trailing "
    "newline dropped): use them for secrets, since KEY=VALUE shows in ps and shell history",
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='a TOML file of config values: key = "value"',
)


def _health_line(name: str, data: dict[str, Any]) -> str:
    check = data["health"]
    if check is None:
        return f"{name} is running ({data['running_seconds']:.2f}s; the image has no health check)"
    return (
        f"{name} is healthy: {check['check']}: {check['detail']} "
        f"({check['seconds']:.2f}s after start, {check['attempts']} checks)"
    )


@click.command()
@click.argument("ref")
@click.option("--name", required=True, help="the machine's name (and host name)")
@set_option
@config_option
@click.option(
    "--volume",
    "volumes",
    multiple=True,
    metavar="PATH=DIR",
    help="keep state path PATH in host folder DIR instead of the machine's folder",
)
@click.option("--wait", is_flag=True, help="wait until systemd runs and the health check passes")
@click.option(
    "--network",
    default="kiln",
    show_default=True,
    metavar="NAME",
    help="the private network to join (made on first use); 'host' shares the host's network",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="[HOST_IP:]HOST_PORT:MACHINE_PORT[/tcp|udp]",
    help="forward a host port to the machine (repeatable); not answered on 127.0.0.1: "
    "from this host use the network's bridge address (kiln ps shows it)",
)
@json_flag
def run(
    ref: str,
    name: str,
    sets: tuple[str, ...],
    config_file: Path | None,
    volumes: tuple[str, ...],
    wait: bool,
    network: str,
    ports: tuple[str, ...],
    as_json: bool,
) -> None:
    """Boot a machine from an image: systemd as PID 1 under systemd-nspawn.

    Give secrets as --set KEY=- (standard input: printf %s "$TOKEN" | kiln run ...) or
    --set KEY=@FILE, not --set KEY=VALUE: a value on the command line shows in ps and in
    shell history. kiln keeps no secret on disk: kiln start asks for them again."""
    # Time to healthy counts this whole process. It is short-lived and makes few cycles:
    # no cyclic collections while it imports, and none over everything it loaded at exit
    # (that full collection costs more than a machine's health check).
    gc.disable()
    from kiln.app import machines as use
    from kiln.app.machines import Request
    from kiln.app.workspace import with_workspace

    request = Request(name, sets, config_file, volumes, wait=wait, network=network, ports=ports)
    launched = with_workspace(use.run, request, ref)
    data = launched.to_json()
    if as_json:
        print_json(data)
    else:
        console.print(
            f"started {name} from {launched.image} (systemd-nspawn pid {data['nspawn_pid']}, "
            f"its systemd pid {data['leader_pid']}) in {data['seconds_to_start']:.2f}s",
            highlight=False,
        )
        if data["address"]:
            console.print(f"{name} is {data['address']} on network {network}", highlight=False)
        if wait:
            console.print(escape(_health_line(name, data)), highlight=False)
    gc.freeze()


@click.command()
@click.argument("name")
@set_option
@config_option
@click.option("--wait", is_flag=True, help="wait until systemd runs and the health check passes")
@json_flag
def start(
    name: str, sets: tuple[str, ...], config_file: Path | None, wait: bool, as_json: bool
) -> None:
    """Boot a stopped machine again, with its own changes, config and volumes.

    Its secrets are not stored anywhere: give each again (--set KEY=-, --set KEY=@FILE
    or --config); a missing one is named and nothing starts."""
    from kiln.app import machines as use
    from kiln.app.machines import StartRequest
    from kiln.app.workspace import with_workspace

    launched = with_workspace(use.start, StartRequest(name, sets, config_file, wait=wait))
    data = launched.to_json()
    if as_json:
        print_json(data)
        return
    console.print(
        f"started {name} again from {launched.image} (systemd-nspawn pid {data['nspawn_pid']}, "
        f"its systemd pid {data['leader_pid']}) in {data['seconds_to_start']:.2f}s",
        highlight=False,
    )
    if wait:
        console.print(escape(_health_line(name, data)), highlight=False)


def _ports(row: dict[str, Any]) -> str:
    """Each forward as where it is reached from this host (not 127.0.0.1) and its port."""
    shown = [f"{f['reach']}->{f['port'].split(':')[-1]}" for f in row.get("forwards") or []]
    return ", ".join(shown) or "-"


@click.command()
@click.option("--all", "include_removed", is_flag=True, help="include removed machines")
@json_flag
def ps(include_removed: bool, as_json: bool) -> None:
    """List machines: image, state, network, address, forwarded ports, volumes."""
    from rich.table import Table

    from kiln.app import machines as use
    from kiln.app.workspace import with_workspace

    rows = with_workspace(use.ps, include_removed)
    if as_json:
        print_json(rows)
        return
    table = Table(
        "NAME",
        "IMAGE",
        "STATE",
        "PID",
        "NETWORK",
        "ADDRESS",
        "PORTS",
        "CREATED",
        "SLOT",
        "VOLUMES",
        box=None,
    )
    for row in rows:
        slot = row.get("slot") or "-"
        if row.get("tentative"):
            slot += " (tentative)"
        if row.get("fallback"):
            slot += f", fallback {row['fallback']['slot']}: {row['fallback']['image']}"
        table.add_row(
            row["name"],
            row["image"],
            row["state"],
            str(row["nspawn_pid"]) if row["state"] == "running" else "-",
            row.get("network") or "-",
            row.get("address") or "-",
            _ports(row),
            row["created"][:19],
            slot,
            ", ".join(f"{k}={v}" for k, v in row["volumes"].items()) or "-",
        )
    wide.print(table)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, command: tuple[str, ...]) -> None:
    """Run a command inside a running machine: kiln exec NAME -- CMD [ARGS...]."""
    from kiln.app import machines as use
    from kiln.app.workspace import with_workspace

    if command[:1] == ("--",):  # after NAME, click hands the separator on as an argument
        command = command[1:]
    if not command:
        raise click.UsageError("give a command to run: kiln exec NAME -- CMD [ARGS...]")
    argv = with_workspace(use.exec_argv, name, command)
    os.execv(argv[0], argv)  # become the command: its stdio, exit code and signals


@click.command()
@click.argument("name")
@click.option("-u", "--unit", help="only this unit's messages")
@click.option("-n", "--lines", type=int, help="only the last N lines")
@click.option("-f", "--follow", is_flag=True, help="keep printing new messages")
@click.option("--console", "show_console", is_flag=True, help="the boot console instead")
def logs(name: str, unit: str | None, lines: int | None, follow: bool, show_console: bool) -> None:
    """Show a machine's journal (or, with --console, its console log)."""
    from kiln.app import machines as use
    from kiln.app.workspace import with_workspace

    shown = with_workspace(use.logs, name, unit, lines, follow, show_console)
    if shown.argv is not None:
        os.execv(shown.argv[0], shown.argv)  # journalctl, with this terminal
    click.echo(shown.text, nl=not shown.text.endswith("\n"))


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds")
def stop(names: tuple[str, ...], timeout: float) -> None:
    """Power machines off (systemd shuts down), then unmount their overlays."""
    from kiln.app import machines as use
    from kiln.app.workspace import opened

    with opened() as workspace:
        for name in names:
            result = use.stop(workspace, name, timeout)
            state = "stopped" if result["was_running"] else "was not running"
            console.print(f"{name} {state}", highlight=False)


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--volumes", "with_volumes", is_flag=True, help="remove its volumes as well")
@click.option(
    "--force",
    is_flag=True,
    help="kill the machine (SIGKILL, no shutdown) instead of stopping it: for one that "
    "will not stop, or whose state file is damaged",
)
def rm(names: tuple[str, ...], with_volumes: bool, force: bool) -> None:
    """Remove machines (stopping them first); their volumes stay unless --volumes."""
    from kiln.app import machines as use
    from kiln.app.workspace import opened

    with opened() as workspace:
        for name in names:
            result = use.rm(workspace, name, with_volumes, force)
            console.print(f"removed {name}", highlight=False)
            for kept in result.kept:
                err.print(f"  kept volume {escape(kept)}", highlight=False)


@click.command()
@click.argument("ref")
@set_option
@config_option
@click.option(
    "--converge",
    "check_convergence",
    is_flag=True,
    help="also re-apply the recipe's steps and fail if that changes any file",
)
@queue_option("kiln.test")
@json_flag
def test(
    ref: str,
    sets: tuple[str, ...],
    config_file: Path | None,
    check_convergence: bool,
    as_json: bool,
) -> None:
    """Run an image's [tests] in a throw-away machine; record the result in the catalog.

    Required config keys nobody gave get throw-away values (secrets: random tokens)."""
    from kiln.app import machines as use
    from kiln.app.workspace import with_workspace

    with progress(f"testing {ref}") as log:
        report = with_workspace(use.test, ref, sets, config_file, check_convergence, log=log)
    if as_json:
        print_json(report.to_json())
    else:
        _render_test(report.to_json())
    if not report.ok:
        raise SystemExit(1)


def _render_test(data: dict[str, Any]) -> None:
    console.print(f"[bold]{data['image']}[/] in machine {data['machine']}", highlight=False)
    check = data["health"]
    if check is not None:
        state = "[green]ok[/]  " if check["ok"] else "[red]FAIL[/]"
        console.print(
            f"  {state} health: {escape(check['check'])}: {escape(check['detail'])} "
            f"({check['seconds']:.2f}s)",
            highlight=False,
        )
    for result in data["results"]:
        state = "[green]ok[/]  " if result["ok"] else "[red]FAIL[/]"
        code = "" if result["ok"] else f", exit code {result['exit_code']}"
        console.print(
            f"  {state} {escape(result['command'])} ({result['seconds']:.2f}s{code})",
            highlight=False,
        )
        for line in result["output"].rstrip().splitlines():
            console.print(f"         {escape(line)}", highlight=False)
    if data["converge"] is not None:
        if data["converge"]:
            console.print("  [green]ok[/]   converge: a second run of the steps changed nothing")
        else:
            changes = data["changes"]
            console.print(
                f"  [red]FAIL[/] converge: a second run of the steps changed "
                f"{len(changes)} file{'s' if len(changes) != 1 else ''}",
                highlight=False,
            )
            for change in changes:
                sign = {"added": "+", "modified": "~", "deleted": "-"}[change["change"]]
                detail = (
                    f" ({change['before']} -> {change['after']})"
                    if change["before"] and change["after"]
                    else ""
                )
                console.print(f"         {sign} {escape(change['path'])}{detail}", highlight=False)
    if data["error"]:
        console.print(f"  [red]error[/] {escape(data['error'])}", highlight=False)
    verdict = "[green]passed[/]" if data["ok"] else "[red]failed[/]"
    console.print(f"{verdict} in {data['seconds']:.2f}s", highlight=False)


def register(group: click.Group) -> None:
    for command in (run, start, ps, logs, stop, rm, test):
        group.add_command(command)
    group.add_command(exec_, name="exec")
