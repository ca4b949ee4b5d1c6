"""Lifecycle commands: promote, channels, rollback, revoke, restore, where (history:
kiln.cli.history)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kiln.cli.history import history
from kiln.cli.output import console, json_flag, policy_option, print_json, wide
from kiln.errors import KilnError

# Commands import their use cases when they run: `kiln where` stays quick on a large catalog.


def _say(text: str) -> None:
    console.print(text, highlight=False)


def _gate_lines(gates: list[dict[str, Any]]) -> None:
    for gate in gates:
        state = "[green]ok[/]  " if gate["ok"] else "[red]FAIL[/]"
        _say(f"  {state} {gate['gate']}: {escape(gate['why'])}")


def _policy_line(policy: dict[str, Any], channel: str) -> str:
    if policy["path"] is None:
        return f"policy: none (no kiln.toml found: {channel} has no gates)"
    return f"policy: {escape(policy['path'])} (sha256:{policy['digest'][:12]})"


@click.command()
@click.argument("ref")
@click.argument("channel")
@click.option("--force", is_flag=True, help="promote even if gates are unmet (recorded as forced)")
@policy_option()
@json_flag
def promote(ref: str, channel: str, force: bool, policy_file: Path | None, as_json: bool) -> None:
    """Point CHANNEL of the image's name at REF, if the policy's gates for it hold.

    A refused promotion lists every unmet gate and exits 1; --force promotes anyway and
    records it as forced, with the gate results (never a revoked image)."""
    from kiln.app import lifecycle
    from kiln.app.workspace import with_workspace

    result = with_workspace(lifecycle.promote, ref, channel, force, policy_file)
    data = result.to_json()
    if as_json:
        print_json(data)
        if not (data["promoted"] or data["unchanged"]):
            raise SystemExit(1)
        return
    _say(_policy_line(data["policy"], channel))
    _gate_lines(data["gates"])
    if data["unchanged"]:
        _say(f"{channel} of {data['name']} is {data['image']} already")
        return
    if not data["promoted"]:
        unmet = data["unmet"]
        hint = (
            "a revoked image is never promoted"
            if "revoked" in unmet
            else "meet them, or promote with --force (recorded as forced)"
        )
        raise KilnError(
            f"{data['image']} was not promoted to {channel}: "
            f"{len(unmet)} unmet gate{'s' if len(unmet) != 1 else ''}: {', '.join(unmet)}",
            hint=hint,
        )
    was = f" (was {data['previous']})" if data["previous"] else ""
    forced = " [yellow]forced[/]" if data["forced"] else ""
    _say(f"promoted {data['image']} to {channel}{was}{forced}")


@click.command()
@click.argument("name", required=False)
@json_flag
def channels(name: str | None, as_json: bool) -> None:
    """List channels and what each points at; with NAME, each one's whole history."""
    from rich.table import Table

    from kiln.app import lifecycle
    from kiln.app.workspace import with_workspace

    rows = with_workspace(lifecycle.channel_list, name)
    if as_json:
        print_json(rows)
        return
    table = Table("NAME", "CHANNEL", "IMAGE", "SINCE", "BY", "ACTION", box=None)
    for row in rows:
        head = row["head"]
        action = head["action"] + (" (forced)" if head["forced"] else "")
        table.add_row(
            row["name"],
            row["channel"],
            row["image"] or "-",
            (row["since"] or "")[:19],
            escape(head["actor"]),
            action,
        )
    wide.print(table)
    for row in rows:
        if row["left"]:
            _say(f"{row['name']}:{row['channel']} is empty now: {escape(row['left'])}")
        if "history" not in row:
            continue
        _say(f"\n[bold]{row['name']}:{row['channel']}[/] history, newest first")
        for step in row["history"]:
            forced = " forced" if step["forced"] else ""
            unmet = [g["gate"] for g in step["gates"] if not g["ok"]]
            missed = f" (unmet: {', '.join(unmet)})" if unmet else ""
            image, previous = _held(step, "image"), _held(step, "previous")
            _say(
                f"  {step['at']}  {step['action']:<8} {image:<12} "
                f"from {previous:<12} {escape(step['actor'])}{forced}{missed}"
            )


def _held(step: dict[str, Any], key: str) -> str:
    """An assignment's image or previous image: '-' for none, 'web:2 (removed by gc)'."""
    if step.get(f"{key}_removed"):
        return f"{step[key] or 'a version'} (removed by gc)"
    return str(step[key] or "-")


@click.command()
@click.argument("name")
@click.argument("channel")
@json_flag
def rollback(name: str, channel: str, as_json: bool) -> None:
    """Point CHANNEL of NAME back at the version it held before its current assignment
    (again: one further back; revoked versions are stepped over)."""
    from kiln.app import lifecycle
    from kiln.app.workspace import with_workspace

    data = with_workspace(lifecycle.rollback, name, channel)
    if as_json:
        print_json(data)
        return
    skipped = f" (stepped over revoked {', '.join(data['skipped'])})" if data["skipped"] else ""
    _say(f"rolled {name}:{channel} back to {data['image']} from {data['previous'] or '-'}{skipped}")


@click.command()
@click.argument("ref")
@click.option("--reason", required=True, help="why: shown wherever the revocation is")
@click.option(
    "--at",
    metavar="TIME",
    help="from when (ISO 8601; UTC unless it has an offset); a future time schedules it",
)
@json_flag
def revoke(ref: str, reason: str, at: str | None, as_json: bool) -> None:
    """Withdraw an image and everything baked on it: no machine boots it, no bake builds
    on it, no channel points at it (the channels that did are emptied)."""
    from kiln.app import lifecycle
    from kiln.app.workspace import with_workspace

    data = with_workspace(lifecycle.revoke, ref, reason, at)
    if as_json:
        print_json(data)
        return
    when = f"from {data['effective']}" if data["scheduled"] else "now"
    _say(f"revoked {data['image']} {when}: {escape(data['reason'])}")
    if data["descendants"]:
        _say(f"  with its descendants: {', '.join(data['descendants'])}")
    for left in data["channels_left"]:
        _say(f"  {left['name']}:{left['channel']} no longer points at {left['image']}")


@click.command()
@click.argument("ref")
@json_flag
def restore(ref: str, as_json: bool) -> None:
    """Lift an image's revocation (its descendants come back with it)."""
    from kiln.app import lifecycle
    from kiln.app.workspace import with_workspace

    data = with_workspace(lifecycle.restore, ref)
    if as_json:
        print_json(data)
        return
    _say(f"restored {data['image']} (was revoked: {escape(data['reason'])})")
    for left in data["channels_left"]:
        _say(
            f"  {left['name']}:{left['channel']} stays empty: "
            f"kiln rollback {left['name']} {left['channel']} points it at {left['image']} again"
        )


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    age = cell["age_seconds"]
    parts = [cell["ref"]]
    if age is not None:
        parts.append(_age(age))
    count = len(cell["machines"])
    if count:
        parts.append(f"{count} machine{'s' if count != 1 else ''}")
    if cell["signed"]:
        parts.append("signed")
    parts += _proof_flag(cell.get("proof"))
    text = " ".join(parts)
    return f"[red]{text} REVOKED[/]" if cell["revoked"] else text


def _empty_cell(why: dict[str, Any] | None) -> str:
    """A channel that holds nothing, with what it held and why it is empty."""
    if why is None:
        return "-"
    if why["removed"]:
        return f"- ({why['left']} removed by gc)"
    revoked = why["revoked"]
    if revoked is None:
        return f"- ({why['left']} left when revoked; restored since)"
    through = f" through {revoked['by']}" if revoked["by"] != why["left"] else ""
    return f"[red]- ({why['left']} revoked{through}: {escape(revoked['reason'])})[/]"


def _proof_flag(proof: dict[str, Any] | None) -> list[str]:
    """An image's last rebuild proof, as kiln where shows it."""
    if proof is None:
        return []
    return [f"proven {proof['at'][:10]}" if proof["ok"] else f"proof failed {proof['at'][:10]}"]


def _freshness(fresh: dict[str, Any] | None) -> str | None:
    """Pending updates from the cached indexes: '2 security, 1 other', 'fresh', or None."""
    if fresh is None:
        return None
    if not (fresh["security"] or fresh["other"]):
        return "fresh"
    security = f"[red]{fresh['security']} security[/]" if fresh["security"] else ""
    other = f"{fresh['other']} other" if fresh["other"] else ""
    return ", ".join(part for part in (security, other) if part)


def _row_freshness(row: dict[str, Any], channels: list[str]) -> str:
    """The FRESHNESS column: each image of the row once (latest, then channel heads)."""
    cells = [row["latest"], *[row["channels"][c] for c in channels]]
    seen: dict[str, str] = {}
    for cell in cells:
        text = _freshness(cell["freshness"]) if cell is not None else None
        if cell is not None and text is not None and cell["ref"] not in seen:
            seen[cell["ref"]] = text
    if len(seen) == 1:
        return next(iter(seen.values()))
    return "; ".join(f"{ref} {text}" for ref, text in seen.items()) or "-"


def _machines_table(machines: list[dict[str, Any]]) -> None:
    from rich.table import Table

    drift = any("drift" in m for m in machines)
    columns = ["MACHINE", "IMAGE", "STATE", "CHANNELS", "REVOKED", *(["DRIFT"] if drift else [])]
    table = Table(*columns, box=None)
    for m in machines:
        revoked = m["revoked"]
        row = [
            m["name"],
            m["image"],
            m["state"],
            ", ".join(m["channels"]) or "-",
            f"[red]by {revoked['by']}: {escape(revoked['reason'])}[/]" if revoked else "-",
        ]
        if drift:
            row.append("-" if m.get("drift") is None else str(m["drift"]))
        table.add_row(*row)
    wide.print(table)


def _revoked_table(revoked: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not revoked:
        _say("nothing is revoked")
        return
    table = Table("REVOKED", "FROM", "REASON", "BY", "WITH IT", box=None)
    for found in revoked:
        when = (found["effective"] or "") + (" (scheduled)" if found["scheduled"] else "")
        with_it = ", ".join(found["descendants"]) or "-"
        table.add_row(
            found["image"], when, escape(found["reason"]), escape(found["actor"]), with_it
        )
    wide.print(table)
    _say("")


def _places(stores: list[dict[str, Any]]) -> str:
    """Every place holding an image's bytes: 'here, store on host-b (/srv/kiln), registry
    docker://...'; 'no store' when none does."""
    out = []
    for place in stores:
        if place["here"]:
            out.append("here")
        elif place["kind"] == "store":
            out.append(f"store on {place['host'] or place['place'][:8]} ({place['home']})")
        else:
            out.append(f"registry {place['place']}")
    return ", ".join(out) or "no store"


@click.command()
@click.argument("target", required=False, metavar="[REF|NAME]")
@click.option(
    "--revoked",
    "revoked_only",
    is_flag=True,
    help="what is revoked (each revocation and what inherits it) and the machines "
    "still running revoked images",
)
@json_flag
def where(target: str | None, revoked_only: bool, as_json: bool) -> None:
    """Which machines run which version, and which channels point at it.

    No argument: every image name against every channel (version, age, machines,
    signed, revoked, and the host holding its bytes when this store does not) and every
    machine. A NAME or REF: each version with the stores and registries holding its
    bytes. --revoked lists every revocation not restored and exits 1 when a machine runs
    a revoked image."""
    from rich.table import Table

    from kiln.app import trace
    from kiln.app.stores import shown as where_bytes
    from kiln.app.workspace import with_workspace

    def held(cell: dict[str, Any] | None) -> str:
        """A cell's bytes, when this store does not hold them: ' @host-b'."""
        if cell is None or any(s["here"] for s in cell.get("stores", [])):
            return ""
        return f" @{escape(where_bytes(cell.get('stores', [])))}"

    data = with_workspace(trace.where, target, revoked_only)
    if revoked_only:
        if as_json:
            print_json(data)
        else:
            _revoked_table(data["revoked"])
            if data["machines"]:
                _machines_table(data["machines"])
            else:
                _say("no machine runs a revoked image")
        if data["machines"]:
            raise SystemExit(1)
        return
    if as_json:
        print_json(data)
        return
    if "versions" in data:
        for version in data["versions"]:
            flags = [f"channels: {', '.join(version['channels'])}"] if version["channels"] else []
            flags += ["latest"] if version.get("latest") else []
            flags += ["signed"] if version["signed"] else []
            fresh = _freshness(version.get("freshness"))
            flags += [f"updates: {fresh}" if fresh != "fresh" else "up to date"] if fresh else []
            flags += _proof_flag(version.get("proof"))
            flags.append(f"bytes: {escape(_places(version.get('stores', [])))}")
            if version.get("left"):
                flags.append(f"left {', '.join(version['left'])} when revoked")
            if version["revoked"]:
                revoked = version["revoked"]
                flags.append(f"[red]revoked by {revoked['by']}: {escape(revoked['reason'])}[/]")
            _say(f"[bold]{version['ref']}[/] {version['digest'][:19]}  {'; '.join(flags)}")
            for m in version["machines"]:
                _say(f"  {m['name']}  {m['state']}")
            if not version["machines"]:
                _say("  no machine")
        return
    table = Table("IMAGE", "LATEST", *[c.upper() for c in data["channels"]], box=None)
    pending = [_row_freshness(row, data["channels"]) for row in data["images"]]
    shown = any(text != "-" for text in pending)  # once kiln outdated has read some image
    if shown:
        table.add_column("FRESHNESS")
    for row, text in zip(data["images"], pending, strict=True):
        cells = [
            _cell(row["channels"][c]) + held(row["channels"][c])
            if row["channels"][c] is not None
            else _empty_cell(row.get("empty", {}).get(c))
            for c in data["channels"]
        ]
        newest = _cell(row["latest"]) + held(row["latest"])
        if row.get("all_revoked"):
            newest = "[red]- (every version revoked)[/]"
        table.add_row(row["name"], newest, *cells, *([text] if shown else []))
    wide.print(table)
    if data["machines"]:
        _say("")
        _machines_table(data["machines"])


def register(group: click.Group) -> None:
    for command in (promote, channels, rollback, revoke, restore, where, history):
        group.add_command(command)
