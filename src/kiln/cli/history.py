"""`kiln history`: an image family's events as aligned text, one sentence each (``--json``
keeps every detail as recorded)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape

from kiln.cli.output import json_flag, print_json, wide

Detail = dict[str, Any]


def _refs(values: list[Any]) -> str:
    return ", ".join(str(value) for value in values)


def _value(value: Any) -> str:
    """A detail value as a person reads it: lists joined, tables as JSON, never a repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return _refs([_value(item) for item in value]) or "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return str(value)


def _promoted(detail: Detail) -> str:
    text = f"to {detail.get('channel')} (was {detail.get('previous') or '-'})"
    unmet = [g.get("gate") for g in detail.get("gates") or [] if not g.get("ok")]
    if detail.get("forced"):
        text += " forced" + (f" past {_refs(unmet)}" if unmet else "")
    return text


def _rolled_back(detail: Detail) -> str:
    skipped = detail.get("skipped") or []
    over = f", stepping over {_refs(skipped)}" if skipped else ""
    return f"{detail.get('channel')} back from {detail.get('previous') or '-'}{over}"


def _revoked(detail: Detail) -> str:
    text = str(detail.get("reason", ""))
    if detail.get("through"):
        versions = _refs(detail.get("versions") or [])
        text += f"; through {detail['through']}" + (f" (versions {versions})" if versions else "")
    if detail.get("descendants"):
        text += f"; with {_refs(detail['descendants'])}"
    when = "scheduled from" if detail.get("scheduled") else "from"
    return f"{text}; {when} {detail.get('effective')}"


def _restored(detail: Detail) -> str:
    text = f"was revoked: {detail.get('reason', '')}"
    if detail.get("through"):
        versions = _refs(detail.get("versions") or [])
        text += f"; through {detail['through']}" + (f" (versions {versions})" if versions else "")
    return text


def _tested(detail: Detail) -> str:
    text = "passed" if detail.get("ok") else "failed"
    return text + (" (with converge)" if detail.get("converge") else "")


def _signed(detail: Detail) -> str:
    return f"with key {str(detail.get('key_id', ''))[:19]}"


def _baked(detail: Detail) -> str:
    if not detail.get("parent"):
        return "a base image"
    named = detail.get("parent_named")
    return f"on {detail['parent']}" + (f" (named {named})" if named else "")


def _removed(detail: Detail) -> str:
    told = sorted((detail.get("rules") or {}).items())
    rules = ", ".join(f"{k}={v}" for k, v in told if v is not None)
    text = f"by {detail.get('by', 'gc')}"
    if rules:
        text += f" ({rules}" + (f"; policy {detail['policy']})" if detail.get("policy") else ")")
    held = detail.get("held") or []
    if held:
        text += f"; channels held it: {_refs(held)}"
    if detail.get("machines"):
        text += f"; with removed machines {_refs(detail['machines'])}"
    return text


def _refreshed(detail: Detail) -> str:
    updates = detail.get("updates") or []
    security = sum(1 for u in updates if isinstance(u, dict) and u.get("security"))
    text = f"{detail.get('state')} from {detail.get('previous')}"
    if updates:
        text += f": {len(updates)} update{'s' if len(updates) != 1 else ''}"
        text += f" ({security} security)" if security else ""
    if detail.get("promoted"):
        text += f"; promoted to {detail['promoted']}"
    if detail.get("error"):
        text += f"; error: {detail['error']}"
    return text


def _propagated(detail: Detail) -> str:
    text = f"{detail.get('state')} from {detail.get('origin')}"
    if detail.get("channel"):
        text += f" toward {detail['channel']}"
    if detail.get("reason"):
        text += f" ({detail['reason']})"
    if detail.get("error"):
        text += f"; error: {detail['error']}"
    return text


def _proved(detail: Detail) -> str:
    what = "rebuilt to the same digest" if detail.get("ok") else "rebuild proof failed"
    return what + (f" (proving {detail['of']})" if detail.get("of") else "")


def _pushed(detail: Detail) -> str:
    return f"to {detail.get('to')}"


def _pulled(detail: Detail) -> str:
    return f"from {detail.get('source')}"


def _machine(detail: Detail) -> str:
    return "for kiln test" if detail.get("throwaway") else ""


# every kind kiln records (kiln.catalog.events.KINDS), in the order of that list
SENTENCES: dict[str, Callable[[Detail], str]] = {
    "baked": _baked,
    "tested": _tested,
    "signed": _signed,
    "promoted": _promoted,
    "rolled_back": _rolled_back,
    "revoked": _revoked,
    "restored": _restored,
    "machine_started": _machine,
    "machine_stopped": _machine,
    "machine_removed": _machine,
    "removed": _removed,
    "refreshed": _refreshed,
    "propagated": _propagated,
    "proved": _proved,
    "pushed": _pushed,
    "pulled": _pulled,
}


def sentence(event: dict[str, Any]) -> str:
    """What an event says, in words; a kind this kiln does not know: its detail, key=value."""
    detail = event["detail"]
    told = SENTENCES.get(event["kind"])
    if told is not None:
        return told(detail)
    return "; ".join(f"{key}={_value(value)}" for key, value in sorted(detail.items()))


@click.command()
@click.argument("name")
@json_flag
def history(name: str, as_json: bool) -> None:
    """Every event of an image family, oldest first, one of: baked, tested, signed,
    promoted, rolled_back, revoked, restored, machine_started, machine_stopped,
    machine_removed, removed (by kiln gc), refreshed (kiln refresh), propagated (kiln
    propagate), proved (kiln rebuild --prove), pushed (kiln push, with where to) and
    pulled (kiln pull, with where from). --json keeps every detail."""
    from rich.table import Table

    from kiln.app import trace
    from kiln.app.workspace import with_workspace

    events = with_workspace(trace.history, name)
    if as_json:
        print_json(events)
        return
    table = Table("AT", "EVENT", "IMAGE", "MACHINE", "WHAT", "BY", box=None)
    for event in events:
        table.add_row(
            event["at"],
            event["kind"],
            event["ref"] or event["name"],
            event["machine"] or "-",
            escape(sentence(event)) or "-",
            escape(event["actor"]),
        )
    wide.print(table)
