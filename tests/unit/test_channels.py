"""Channels on a real SQLite catalog: promotion moves the head, every assignment is kept,
a channel ref resolves through the one resolver, and rollback walks the history back one
assignment at a time, never onto what an earlier rollback undid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kiln import refs
from kiln.app import lifecycle, trace
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import AssignmentRow
from kiln.errors import BadInput, KilnError, NotFound
from kiln.lifecycle import channels
from tests.unit.lifecycle_rows import add_image, workspace

__all__ = ["workspace"]  # the fixture


def test_promote_moves_the_head_and_keeps_every_assignment(workspace: Workspace) -> None:
    one, two = add_image(workspace, "web", 1), add_image(workspace, "web", 2)
    first = lifecycle.promote(workspace, "web:1", "prod")
    assert first.promoted and first.previous is None and not first.forced
    second = lifecycle.promote(workspace, "web:2", "prod")
    assert second.promoted and second.previous == "web:1"
    assert workspace.lookup.image(refs.parse("web:prod")) == two
    [listed] = lifecycle.channel_list(workspace, "web")
    assert listed["image"] == "web:2" and listed["digest"] == two.digest
    history = listed["history"]
    assert [(h["action"], h["image"], h["previous"]) for h in history] == [
        ("promote", "web:2", "web:1"),
        ("promote", "web:1", None),
    ]
    assert all(h["actor"] and h["at"] and h["forced"] is False for h in history)
    assert history[0]["gates"] == [{"gate": "revoked", "ok": True, "why": "not revoked"}]
    assert one.id != two.id


def test_promoting_the_head_again_changes_nothing(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    lifecycle.promote(workspace, "web:1", "dev")
    again = lifecycle.promote(workspace, "web", "dev")  # the bare name: the newest
    assert again.unchanged and not again.promoted
    assert len(lifecycle.channel_list(workspace, "web")[0]["history"]) == 1


def test_a_channel_ref_is_a_ref_wherever_one_is_taken(workspace: Workspace) -> None:
    one = add_image(workspace, "web", 1)
    add_image(workspace, "web", 2)
    lifecycle.promote(workspace, "web:1", "prod")
    assert workspace.lookup.image(refs.parse("web:prod")) == one
    promoted = lifecycle.promote(workspace, "web:prod", "staging")
    assert promoted.image == one
    with pytest.raises(NotFound, match="web has no channel qa"):
        workspace.lookup.image(refs.parse("web:qa"))
    found = trace.where(workspace, "web:prod")
    assert [v["ref"] for v in found["versions"]] == ["web:1"]
    assert found["versions"][0]["channels"] == ["prod", "staging"]


def test_an_unknown_image_name_suggests_the_nearest(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    add_image(workspace, "base", 1)
    with pytest.raises(NotFound, match=r"no image wbe:1 in the catalog \(did you mean web\?\)"):
        lifecycle.promote(workspace, "wbe:1", "prod")
    with pytest.raises(NotFound) as far:
        lifecycle.promote(workspace, "zzz:1", "prod")
    assert "did you mean" not in far.value.message
    with pytest.raises(NotFound, match=r"^no image web:9 in the catalog$") as known:
        lifecycle.promote(workspace, "web:9", "prod")  # web is known: its versions are listed
    assert known.value.hint == "'kiln images' lists the versions of web"


def test_a_channel_ref_the_name_does_not_have_suggests_the_nearest(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    lifecycle.promote(workspace, "web:1", "prod")
    with pytest.raises(NotFound, match=r"web has no channel prdo \(did you mean prod\?\)$"):
        lifecycle.promote(workspace, "web:prdo", "staging")
    with pytest.raises(NotFound, match=r"web has no channel qa$"):
        workspace.lookup.image(refs.parse("web:qa"))


@pytest.mark.parametrize("bad", ["3", "latest", "Prod", "-x", ""])
def test_channel_names_are_never_numbers_nor_latest(workspace: Workspace, bad: str) -> None:
    add_image(workspace, "web", 1)
    with pytest.raises(BadInput):
        lifecycle.promote(workspace, "web:1", bad)


def test_latest_is_a_version_never_a_channel() -> None:
    assert refs.parse("web:latest") == refs.Ref("web")
    assert refs.parse("web:prod").channel == "prod"
    assert refs.parse("web:3").version == 3


def test_each_rollback_steps_one_assignment_further_back(workspace: Workspace) -> None:
    for version in (1, 2, 3):
        add_image(workspace, "web", version)
        lifecycle.promote(workspace, f"web:{version}", "prod")
    back = lifecycle.rollback(workspace, "web", "prod")
    assert (back["image"], back["previous"]) == ("web:2", "web:3")
    back = lifecycle.rollback(workspace, "web", "prod")
    assert (back["image"], back["previous"]) == ("web:1", "web:2")
    with pytest.raises(KilnError, match="no earlier version"):
        lifecycle.rollback(workspace, "web", "prod")
    assert lifecycle.channel_list(workspace, "web")[0]["image"] == "web:1"


def test_a_rollback_never_returns_to_what_an_earlier_one_undid(workspace: Workspace) -> None:
    for version in (1, 2, 3):
        add_image(workspace, "web", version)
    lifecycle.promote(workspace, "web:1", "prod")
    lifecycle.promote(workspace, "web:2", "prod")
    assert lifecycle.rollback(workspace, "web", "prod")["image"] == "web:1"
    lifecycle.promote(workspace, "web:3", "prod")
    # back from 3 goes to 1 (what 3 replaced), not to 2 (which the first rollback undid)
    assert lifecycle.rollback(workspace, "web", "prod")["image"] == "web:1"
    history = lifecycle.channel_list(workspace, "web")[0]["history"]
    assert [h["action"] for h in reversed(history)] == [
        "promote",
        "promote",
        "rollback",
        "promote",
        "rollback",
    ]


def test_rollback_steps_over_revoked_versions(workspace: Workspace) -> None:
    for version in (1, 2, 3):
        add_image(workspace, "web", version)
        lifecycle.promote(workspace, f"web:{version}", "prod")
    lifecycle.revoke(workspace, "web:2", "broken")
    back = lifecycle.rollback(workspace, "web", "prod")
    assert (back["image"], back["skipped"]) == ("web:1", ["web:2"])


def test_rollback_of_a_channel_a_revocation_emptied(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    add_image(workspace, "web", 2)
    lifecycle.promote(workspace, "web:1", "prod")
    lifecycle.promote(workspace, "web:2", "prod")
    lifecycle.revoke(workspace, "web:2", "broken")
    back = lifecycle.rollback(workspace, "web", "prod")
    assert (back["image"], back["previous"], back["skipped"]) == ("web:1", None, ["web:2"])


def test_rollback_of_an_unknown_channel_or_name(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    with pytest.raises(NotFound, match="no channel prod"):
        lifecycle.rollback(workspace, "web", "prod")
    with pytest.raises(NotFound, match="no image named nope"):
        lifecycle.rollback(workspace, "nope", "prod")


def _row(number: int, action: str, image: int | None) -> AssignmentRow:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=number)
    return AssignmentRow(number, "web", "prod", image, None, action, at, "me", False, "[]")


def test_the_stack_replays_rollbacks_and_revocations() -> None:
    rows = [
        _row(1, "promote", 1),
        _row(2, "promote", 2),
        _row(3, "promote", 3),
        _row(4, "revoke", None),
        _row(5, "rollback", 2),  # stepped over the empty state and revoked 3
    ]
    assert channels.stack(rows) == [1, 2]
    target = channels.rollback_target(rows, lambda _image: True)
    assert target is not None and target.image_id == 1
    assert channels.rollback_target(rows[:1], lambda _image: True) is None


def test_holds_are_the_spans_an_image_was_the_head() -> None:
    rows = [_row(1, "promote", 1), _row(2, "promote", 2), _row(4, "promote", 1)]
    now = rows[-1].at + timedelta(hours=5)
    spans = channels.holds(rows, 1, now)
    assert [(end - start).total_seconds() / 3600 for start, end in spans] == [1.0, 5.0]
    assert channels.holds(rows, 3, now) == []
