"""Revocation on a real SQLite catalog: inherited by every descendant (shown with the
ancestor that caused it), enforced by the one lookup for what launches, bakes on or
promotes, shown by what only looks, emptying the channels that pointed at it (now, or when
a scheduled time comes), and lifted by restore."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from kiln import refs
from kiln.app import lifecycle, trace
from kiln.app.workspace import Workspace
from kiln.catalog import session as catalog_session
from kiln.catalog.lifecycle import Assignment
from kiln.catalog.lookup import ImageRow, Revoked
from kiln.errors import BadInput, KilnError
from kiln.lifecycle import revocation
from tests.unit.lifecycle_rows import add_image, add_machine, workspace

__all__ = ["workspace"]  # the fixture


def family(workspace: Workspace) -> dict[str, ImageRow]:
    base1 = add_image(workspace, "base", 1)
    base2 = add_image(workspace, "base", 2)
    return {
        "base:1": base1,
        "base:2": base2,
        "web:1": add_image(workspace, "web", 1, base1),
        "web:2": add_image(workspace, "web", 2, base1),
        "app:1": add_image(workspace, "app", 1, add_image(workspace, "mid", 1, base1)),
        "web:3": add_image(workspace, "web", 3, base2),
    }


def test_descendants_inherit_it_and_say_from_whom(workspace: Workspace) -> None:
    images = family(workspace)
    done = lifecycle.revoke(workspace, "base:1", "CVE-2026-0001 in openssl")
    assert done["descendants"] == ["app:1", "mid:1", "web:1", "web:2"]
    lookup = workspace.lookup
    for ref in ("base:1", "web:2", "app:1"):
        with pytest.raises(Revoked, match="base:1") as caught:
            lookup.image(refs.parse(ref))
        assert "CVE-2026-0001" in caught.value.message
        assert lookup.image(refs.parse(ref), usable=False) == images[ref]  # looking is fine
    found = lookup.revocation(images["app:1"].id)
    assert found is not None and found.ref == "base:1"
    assert lookup.revocation(images["web:3"].id) is None
    assert lookup.image(refs.parse("web")) == images["web:3"]
    assert lookup.image(refs.parse("web:latest")) == images["web:3"]


def test_it_holds_for_every_version_with_the_revoked_bytes(workspace: Workspace) -> None:
    """A bake back to base:1's inputs numbers its bytes base:3: revoking either number
    revokes the bytes, so neither they nor what is built on them launch."""
    images = family(workspace)
    again = add_image(workspace, "base", 3, bytes_of=images["base:1"])
    on_again = add_image(workspace, "api", 1, again)
    done = lifecycle.revoke(workspace, "base:1", "CVE-2026-0001 in openssl")
    assert "base:3" in done["descendants"]
    lookup = workspace.lookup
    for row in (again, on_again):
        found = lookup.revocation(row.id)
        assert found is not None and found.ref == "base:1"
    assert lookup.image(refs.parse("base")) == images["base:2"]
    with pytest.raises(Revoked, match="revoked through base:1"):
        lookup.image(refs.parse("base:3"))
    with pytest.raises(KilnError, match="inherits base:1's revocation"):
        lifecycle.restore(workspace, "base:3")
    lifecycle.restore(workspace, "base:1")
    assert lookup.revocation(again.id) is None and lookup.revocation(on_again.id) is None
    lifecycle.revoke(workspace, "base:3", "the same bytes, by their new number")
    found = lookup.revocation(images["web:1"].id)
    assert found is not None and found.ref == "base:3"


def test_latest_is_the_newest_version_not_revoked(workspace: Workspace) -> None:
    images = family(workspace)
    lifecycle.revoke(workspace, "web:3", "bad build")
    assert workspace.lookup.image(refs.parse("web"), usable=False) == images["web:2"]
    lifecycle.revoke(workspace, "base:1", "bad base")
    with pytest.raises(Revoked, match="every version of web is revoked"):
        workspace.lookup.image(refs.parse("web"))


def test_a_revoked_cache_hit_is_refused(workspace: Workspace) -> None:
    images = family(workspace)
    lifecycle.revoke(workspace, "base:1", "bad base")
    with pytest.raises(Revoked, match="these inputs make web:1"):
        workspace.lookup.by_cache_key(images["web:1"].cache_key)
    assert workspace.lookup.by_cache_key(images["web:3"].cache_key) == images["web:3"]


def test_channels_that_pointed_at_it_are_emptied(workspace: Workspace) -> None:
    family(workspace)
    lifecycle.promote(workspace, "web:2", "prod")
    lifecycle.promote(workspace, "base:1", "staging")
    lifecycle.promote(workspace, "web:3", "dev")
    done = lifecycle.revoke(workspace, "base:1", "bad base")
    assert sorted((c["name"], c["channel"], c["image"]) for c in done["channels_left"]) == [
        ("base", "staging", "base:1"),
        ("web", "prod", "web:2"),
    ]
    with workspace.catalog.reading() as session:
        emptied = session.scalars(select(Assignment).where(Assignment.action == "revoke")).all()
    assert sorted((row.name, row.channel, row.image_id) for row in emptied) == [
        ("base", "staging", None),
        ("web", "prod", None),
    ]
    with pytest.raises(Revoked, match="channel prod of web is empty: web:2 is revoked through"):
        workspace.lookup.image(refs.parse("web:prod"))
    assert workspace.lookup.image(refs.parse("web:dev")).ref == "web:3"
    heads = {c["channel"]: c["image"] for c in lifecycle.channel_list(workspace, "web")}
    assert heads == {"dev": "web:3", "prod": None}


def test_a_scheduled_revocation_takes_effect_when_its_time_comes(workspace: Workspace) -> None:
    images = family(workspace)
    lifecycle.promote(workspace, "web:1", "prod")
    at = datetime.now(UTC) + timedelta(seconds=3)  # time for the steps below on a busy host
    done = lifecycle.revoke(workspace, "base:1", "end of support", at.isoformat())
    assert done["scheduled"] and done["channels_left"] == []
    lookup = workspace.lookup
    assert lookup.image(refs.parse("web:prod")) == images["web:1"]  # not yet
    later = at + timedelta(seconds=1)
    assert lookup.revocation(images["web:1"].id, at=later) is not None
    head = lookup.head("web", "prod", at=later)
    assert head is not None and head.current is None and head.left is not None
    gate = lifecycle.promote(workspace, "web:2", "staging").outcomes[0]
    assert gate.ok and "is to be from" in gate.why
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(Revoked, match="channel prod of web is empty"):
        lookup.image(refs.parse("web:prod"))
    listed = {c["channel"]: c for c in lifecycle.channel_list(workspace, "web")}
    assert listed["prod"]["image"] is None
    assert listed["prod"]["head"]["action"] == "revoke"  # the read wrote the row
    with workspace.catalog.reading() as session:
        reader = catalog_session.reader(session)
        assert revocation.settle(session, reader, datetime.now(UTC)) == []  # only once


def test_restore_lifts_it_and_a_rollback_brings_a_channel_back(workspace: Workspace) -> None:
    images = family(workspace)
    lifecycle.promote(workspace, "web:1", "prod")
    lifecycle.revoke(workspace, "base:1", "false alarm")
    with pytest.raises(KilnError, match="inherits base:1"):
        lifecycle.restore(workspace, "web:1")
    with pytest.raises(KilnError, match="already revoked"):
        lifecycle.revoke(workspace, "base:1", "again")
    restored = lifecycle.restore(workspace, "base:1")
    assert restored["channels_left"] == [{"name": "web", "channel": "prod", "image": "web:1"}]
    assert workspace.lookup.image(refs.parse("web:1")) == images["web:1"]
    with pytest.raises(KilnError, match="is not revoked"):
        lifecycle.restore(workspace, "base:1")
    assert lifecycle.rollback(workspace, "web", "prod")["image"] == "web:1"


def test_a_reason_and_a_real_time_are_needed(workspace: Workspace) -> None:
    family(workspace)
    with pytest.raises(BadInput, match="needs a reason"):
        lifecycle.revoke(workspace, "base:1", "  ")
    with pytest.raises(BadInput, match="not an ISO 8601 time"):
        lifecycle.revoke(workspace, "base:1", "x", "tomorrow")


def test_history_and_where_tell_of_it(workspace: Workspace) -> None:
    images = family(workspace)
    add_machine(workspace, "web-a", images["web:1"])
    lifecycle.promote(workspace, "web:1", "prod")
    lifecycle.revoke(workspace, "base:1", "bad base")
    kinds = [(e["kind"], e["ref"]) for e in trace.history(workspace, "web")]
    assert kinds == [("promoted", "web:1"), ("revoked", None)]
    revoked = trace.history(workspace, "web")[-1]["detail"]
    assert revoked["through"] == "base:1" and revoked["versions"] == [1, 2]
    lifecycle.restore(workspace, "base:1")
    assert [e["kind"] for e in trace.history(workspace, "base")] == ["revoked", "restored"]
    lifecycle.revoke(workspace, "web:1", "bad web")
    found = trace.where(workspace, "web")
    [one] = [v for v in found["versions"] if v["ref"] == "web:1"]
    assert one["revoked"]["by"] == "web:1" and one["machines"][0]["name"] == "web-a"
    assert one["machines"][0]["state"] == "missing"  # no folder: as kiln ps shows it
    listed = trace.where(workspace, revoked_only=True)
    assert listed["machines"] == []  # none running
    assert [(r["image"], r["reason"]) for r in listed["revoked"]] == [("web:1", "bad web")]
    matrix = trace.where(workspace)
    assert matrix["channels"] == ["prod"]
    rows = {row["name"]: row for row in matrix["images"]}
    assert rows["web"]["latest"]["ref"] == "web:3" and rows["web"]["channels"]["prod"] is None
    assert matrix["machines"][0]["revoked"]["reason"] == "bad web"


def test_restoring_a_name_lifts_what_revoking_the_name_revoked(workspace: Workspace) -> None:
    images = family(workspace)
    first = lifecycle.revoke(workspace, "web", "bad build")
    second = lifecycle.revoke(workspace, "web", "bad too")
    assert (first["image"], second["image"]) == ("web:3", "web:2")
    lifecycle.revoke(workspace, "base:1", "bad base")  # another name's: web's stay apart
    assert lifecycle.restore(workspace, "web")["image"] == "web:2"
    lookup = workspace.lookup
    assert lookup.revocation(images["web:3"].id) is not None  # the earlier revoke holds
    assert lookup.revocation(images["web:2"].id).ref == "base:1"  # type: ignore[union-attr]
    assert lifecycle.restore(workspace, "web:latest")["image"] == "web:3"
    with pytest.raises(KilnError, match="no version of web is revoked") as caught:
        lifecycle.restore(workspace, "web")
    assert caught.value.hint is not None and "kiln where --revoked" in caught.value.hint
    done = lifecycle.restore(workspace, "base")
    assert done["image"] == "base:1" and lookup.revocation(images["app:1"].id) is None


def test_where_revoked_lists_every_revocation_the_restore_hint_points_at(
    workspace: Workspace,
) -> None:
    family(workspace)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    lifecycle.revoke(workspace, "base:1", "bad base")
    lifecycle.revoke(workspace, "web:3", "end of support", later)
    with pytest.raises(KilnError, match="is not revoked") as caught:
        lifecycle.restore(workspace, "base:2")
    assert caught.value.hint is not None and "'kiln where --revoked'" in caught.value.hint
    listed = trace.where(workspace, revoked_only=True)["revoked"]
    assert [(r["image"], r["scheduled"], r["descendants"]) for r in listed] == [
        ("base:1", False, ["app:1", "mid:1", "web:1", "web:2"]),
        ("web:3", True, []),
    ]
    only = trace.where(workspace, "app", revoked_only=True)["revoked"]
    assert [r["image"] for r in only] == ["base:1"]
    assert [r["image"] for r in trace.where(workspace, "web:3", revoked_only=True)["revoked"]] == [
        "web:3"
    ]
