"""Promotion gates from a real policy file, on a real SQLite catalog: a promotion that
misses gates is refused with every unmet one named, --force records them, and each gate
holds exactly when its evidence is there (a passed test of this digest, a converged run,
a soak in the channel before, a valid signature by a trusted key, no revocation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from kiln.app import lifecycle
from kiln.app.workspace import Workspace
from kiln.catalog.lifecycle import Assignment, Event
from kiln.errors import BadInput
from kiln.lifecycle import gates, signing
from kiln.store.layout import MEDIA_MANIFEST, Descriptor
from tests.unit.lifecycle_rows import (
    add_image,
    add_test_run,
    age_channel,
    workspace,
    write_policy,
)

__all__ = ["workspace"]  # the fixture

POLICY = """
[channels.staging]
tests = true

[channels.prod]
tests = true
converge = true
after = "staging"
soak = "1h"
"""


def unmet(result: lifecycle.Promotion) -> list[str]:
    return [o.gate for o in result.unmet]


def test_a_promotion_missing_gates_names_every_one(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, POLICY)
    add_image(workspace, "web", 1)
    refused = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert not refused.promoted
    assert unmet(refused) == ["tests", "converge", "soak"]
    assert refused.policy["path"] == str(policy.resolve())
    whys = {o.gate: o.why for o in refused.outcomes}
    assert "no kiln test of web:1" in whys["tests"]
    assert "has not been in staging" in whys["soak"]
    assert lifecycle.channel_list(workspace, "web") == []


def test_each_gate_holds_once_its_evidence_is_there(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, POLICY)
    web = add_image(workspace, "web", 1)
    add_test_run(workspace, web, ok=True)
    assert unmet(lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)) == [
        "converge",
        "soak",
    ]
    add_test_run(workspace, web, ok=True, converge=True)
    staged = lifecycle.promote(workspace, "web:1", "staging", policy_file=policy)
    assert staged.promoted
    soaking = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert unmet(soaking) == ["soak"]
    assert "of its 1h soak" in soaking.unmet[0].why
    age_channel(workspace, "web", "staging", 2 * 3600)
    promoted = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert promoted.promoted and not promoted.forced and not promoted.unmet
    with workspace.catalog.reading() as session:
        [row] = session.scalars(select(Assignment).where(Assignment.channel == "prod")).all()
        assert row.forced is False and row.image_id == web.id
        assert {g["gate"] for g in row.gate_results()} == {"revoked", "tests", "converge", "soak"}
        event = session.scalars(select(Event).where(Event.kind == "promoted")).all()[-1]
        assert event.details()["policy"]["path"] == str(policy.resolve())


def test_the_latest_test_run_decides(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, POLICY)
    web = add_image(workspace, "web", 1)
    add_test_run(workspace, web, ok=True, ago=60)
    add_test_run(workspace, web, ok=False)
    refused = lifecycle.promote(workspace, "web:1", "staging", policy_file=policy)
    assert unmet(refused) == ["tests"]
    assert "failed" in refused.unmet[0].why


def test_a_test_of_another_digest_does_not_count(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, POLICY)
    add_image(workspace, "web", 1)
    other = add_image(workspace, "web", 2)
    add_test_run(workspace, other, ok=True)
    assert unmet(lifecycle.promote(workspace, "web:1", "staging", policy_file=policy)) == ["tests"]


def test_a_soak_that_ended_short_does_not_count(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, '[channels.staging]\n[channels.prod]\nafter = "staging"\nsoak = "1h"\n'
    )
    add_image(workspace, "web", 1)
    add_image(workspace, "web", 2)
    lifecycle.promote(workspace, "web:1", "staging")
    lifecycle.promote(workspace, "web:2", "staging")  # web:1 left staging at once
    age_channel(workspace, "web", "staging", 3 * 3600)
    refused = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert unmet(refused) == ["soak"] and "short of its 1h soak" in refused.unmet[0].why
    assert lifecycle.promote(workspace, "web:2", "prod", policy_file=policy).promoted


def test_force_promotes_and_records_the_unmet_gates(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, POLICY)
    add_image(workspace, "web", 1)
    forced = lifecycle.promote(workspace, "web:1", "prod", force=True, policy_file=policy)
    assert forced.promoted and forced.forced
    [listed] = lifecycle.channel_list(workspace, "web")
    head = listed["head"]
    assert head["forced"] is True
    assert [g["gate"] for g in head["gates"] if not g["ok"]] == ["tests", "converge", "soak"]


def test_force_never_promotes_a_revoked_image(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    lifecycle.revoke(workspace, "web:1", "broken")
    refused = lifecycle.promote(workspace, "web:1", "prod", force=True)
    assert not refused.promoted and unmet(refused) == ["revoked"]
    assert "web:1 is revoked" in refused.unmet[0].why


def _sign(workspace: Workspace, digest: str, folder: Path, name: str) -> Path:
    made = signing.generate(None)
    (folder / f"{name}.pub").write_bytes(made.public_pem)
    (folder / f"{name}.key").write_bytes(made.private_pem)
    key = signing.load_private_key(folder / f"{name}.key", None)
    size = len(workspace.layout.read_bytes(digest))
    signing.sign(workspace.layout, Descriptor(MEDIA_MANIFEST, digest, size), "web:1", key)
    return folder / f"{name}.pub"


def test_the_signed_gate_wants_a_trusted_key(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, '[trust]\nkeys = ["trusted.pub"]\n[channels.prod]\nsigned = true\n'
    )
    web = add_image(workspace, "web", 1, stored=True)
    (tmp_path / "trusted.pub").write_bytes(signing.generate(None).public_pem)
    refused = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert unmet(refused) == ["signed"]
    _sign(workspace, web.digest, tmp_path, "stranger")
    assert unmet(lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)) == ["signed"]
    _sign(workspace, web.digest, tmp_path, "trusted")
    signed = lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)
    assert signed.promoted, signed.to_json()
    assert {o.gate: o.ok for o in signed.outcomes} == {"revoked": True, "signed": True}


def test_a_channel_the_policy_does_not_define_is_refused(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Under a policy, a typo of prod (or a qa nobody defined) is not a channel without
    gates: it is refused (exit 2), --force too, and nothing is recorded."""
    policy = write_policy(tmp_path, POLICY)
    add_image(workspace, "web", 1)
    with pytest.raises(BadInput, match=r"prdo is not a channel .* \(did you mean prod\?\)") as typo:
        lifecycle.promote(workspace, "web:1", "prdo", force=True, policy_file=policy)
    assert typo.value.exit_code == 2 and str(policy.resolve()) in typo.value.message
    assert "its channels: staging, prod" in (typo.value.hint or "")
    assert "[channels] open = true" in (typo.value.hint or "")
    with pytest.raises(BadInput, match="qa is not a channel") as qa:
        lifecycle.promote(workspace, "web:1", "qa", policy_file=policy)
    assert "did you mean" not in qa.value.message
    assert lifecycle.channel_list(workspace, "web") == []


def test_an_open_policy_lets_a_promotion_enter_a_channel_it_does_not_define(
    workspace: Workspace, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, "[channels]\nopen = true\n" + POLICY)
    add_image(workspace, "web", 1)
    opened = lifecycle.promote(workspace, "web:1", "qa", policy_file=policy)
    assert opened.promoted and [o.gate for o in opened.outcomes] == ["revoked"]
    assert unmet(lifecycle.promote(workspace, "web:1", "prod", policy_file=policy)) == [
        "tests",
        "converge",
        "soak",
    ]


def test_propagate_and_refresh_refuse_such_a_channel_before_any_bake(
    workspace: Workspace, tmp_path: Path
) -> None:
    from kiln.app import propagate, refresh
    from kiln.catalog.freshness import Propagation

    policy = write_policy(tmp_path, POLICY)
    add_image(workspace, "web", 1)
    with pytest.raises(BadInput, match=r"prdo is not a channel .*did you mean prod"):
        propagate.propagate(
            workspace, "web:1", propagate.Options(to="prdo", policy_file=policy), print
        )
    with workspace.catalog.reading() as session:
        assert session.scalars(select(Propagation)).all() == []
    with pytest.raises(BadInput, match="qa is not a channel"):
        refresh.refresh(
            workspace, ["web"], refresh.Options(promote="qa", policy_file=policy), print
        )


def test_without_a_policy_file_any_channel_name_is_open(workspace: Workspace) -> None:
    add_image(workspace, "web", 1)
    assert lifecycle.promote(workspace, "web:1", "qa").promoted


def test_a_gate_is_one_function_and_one_entry(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_image(workspace, "web", 1)

    def fresh(candidate: gates.Candidate) -> tuple[bool, str] | None:
        return (False, "too old") if candidate.channel == "prod" else None

    monkeypatch.setitem(gates.GATES, "fresh", fresh)
    refused = lifecycle.promote(workspace, "web:1", "prod")
    assert [(o.gate, o.why) for o in refused.unmet] == [("fresh", "too old")]
    assert lifecycle.promote(workspace, "web:1", "dev").promoted


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (59, "59s"), (61, "1m1s"), (3600, "1h"), (90061, "1d1h")]
)
def test_spans_read_like_policy_durations(seconds: int, shown: str) -> None:
    assert gates.span(seconds) == shown
