"""kiln gc and the channels: the version a rollback goes back to stays whatever the rules
say, a version a channel held is said to be so when it goes (dry run or not), a rollback
that can no longer go back says gc removed what it would have found, a channel's history
names the versions gc removed, and the report credits each rule to where it came from."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kiln.app import gc, lifecycle
from kiln.app.workspace import Workspace
from kiln.catalog.lifecycle import Event
from kiln.cli.build import gc as gc_command
from kiln.cli.lifecycle import channels as channels_command
from kiln.errors import BadInput, KilnError
from tests.unit.lifecycle_rows import add_image, workspace, write_policy

__all__ = ["workspace"]  # the fixture


def promoted(workspace: Workspace, count: int) -> None:
    for version in range(1, count + 1):
        add_image(workspace, "web", version, stored=True)
        lifecycle.promote(workspace, f"web:{version}", "prod")


def test_the_rollback_target_stays_and_what_goes_is_named_with_its_channel(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    promoted(workspace, 3)
    dry = gc.collect_garbage(workspace, dry_run=True, keep_last=0)
    kept = {row["ref"]: row["reasons"] for row in dry.to_json()["retention"]["kept"]}
    assert kept == {"web:2": ["rollback target of web:prod"], "web:3": ["head of web:prod"]}
    assert dry.to_json()["retention"]["removed"][0]["held_by"] == ["web:prod"]
    monkeypatch.setenv("KILN_HOME", str(workspace.home.root))
    out = CliRunner().invoke(gc_command, ["--dry-run", "--keep-last", "0"])
    assert out.exit_code == 0, out.output
    assert "would remove version web:1 (held by web:prod before)" in out.output
    assert "retention: keep_last=0 (--keep-last)" in out.output

    gc.collect_garbage(workspace, keep_last=0)
    with workspace.catalog.reading() as session:
        [event] = session.query(Event).filter_by(kind="removed").all()
        assert event.details()["held"] == ["web:prod"]
    assert lifecycle.rollback(workspace, "web", "prod")["image"] == "web:2"
    with pytest.raises(KilnError, match="web:1, which it held before, was removed by kiln gc"):
        lifecycle.rollback(workspace, "web", "prod")
    [prod] = lifecycle.channel_list(workspace, "web")
    first = prod["history"][-1]
    assert (first["image"], first["image_removed"]) == ("web:1", True)
    second = prod["history"][-2]
    assert (second["previous"], second["previous_removed"]) == ("web:1", True)
    text = CliRunner().invoke(channels_command, ["web"])
    assert "web:1 (removed by gc)" in text.output


def test_a_flag_is_credited_to_itself_not_to_the_policy_file(workspace: Workspace) -> None:
    policy = write_policy(
        workspace.home.root, '[retention]\nkeep_last = 3\nkeep_younger_than = "1d"\n'
    )
    collected = gc.collect_garbage(workspace, dry_run=True, keep_last=0)
    assert collected.sources == {"keep_last": "--keep-last", "keep_younger_than": str(policy)}
    assert collected.decision.rules.keep_last == 0
    with pytest.raises(BadInput, match=r"--keep-younger-than 5x: '5x' is not a duration") as e:
        gc.collect_garbage(workspace, dry_run=True, keep_younger_than="5x")
    assert str(policy) not in e.value.message and "kiln.toml" not in e.value.message
