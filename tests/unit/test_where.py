"""What the list views say of an image's life: kiln images marks revoked versions with
the reason and lists what gc removed as removed; kiln where tells why a channel is empty,
prints a family all of whose versions are revoked, and orders its channel columns as the
policy's pipeline runs, with the channels it defines that were never promoted into."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kiln.app import gc, images, lifecycle, trace
from kiln.app.workspace import Workspace
from kiln.cli.build import images as images_command
from kiln.cli.lifecycle import where as where_command
from tests.unit.lifecycle_rows import add_image, workspace, write_policy

# a pipe's whole rows, whatever COLUMNS the runner has (pytest-xdist's workers set 80)
WHOLE_ROWS: dict[str, str | None] = {"COLUMNS": None}

__all__ = ["workspace"]  # the fixture

PIPELINE = """
[channels.prod]
after = "staging"

[channels.staging]
after = "dev"

[channels.dev]

[channels.qa]
"""


def test_images_marks_revoked_versions_and_lists_removed_ones(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = add_image(workspace, "base", 1, stored=True)
    for version in (1, 2, 3):
        add_image(workspace, "web", version, base, stored=True)
    lifecycle.revoke(workspace, "web:3", "bad build")
    gc.collect_garbage(workspace, keep_last=2)  # web:1 goes
    rows = {row["ref"]: row for row in images.list_images(workspace)}
    assert list(rows) == ["base:1", "web:1", "web:2", "web:3"]
    assert rows["web:3"]["revoked"]["reason"] == "bad build"
    assert rows["web:2"]["revoked"] is None and rows["web:2"]["status"] == "ok"
    assert rows["web:1"]["status"] == "removed" and rows["web:1"]["removed"]["by"] == "gc"
    monkeypatch.setenv("KILN_HOME", str(workspace.home.root))
    text = CliRunner(env=WHOLE_ROWS).invoke(images_command, []).output
    assert "web:1 (removed by gc)" in text
    [web3] = [line for line in text.splitlines() if line.strip().startswith("web:3")]
    assert "revoked: bad build" in web3


def test_where_tells_why_a_channel_is_empty_and_prints_a_revoked_family(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = add_image(workspace, "base", 1)
    for version in (1, 2):
        add_image(workspace, "web", version, base)
    lifecycle.promote(workspace, "web:2", "prod")
    lifecycle.revoke(workspace, "base:1", "CVE-2026-0001")
    family = trace.where(workspace, "web")
    assert [(v["ref"], v["revoked"]["by"], v["left"]) for v in family["versions"]] == [
        ("web:2", "base:1", ["prod"]),
        ("web:1", "base:1", []),
    ]
    matrix = trace.where(workspace)
    [web] = [row for row in matrix["images"] if row["name"] == "web"]
    assert web["channels"]["prod"] is None and web["all_revoked"]
    assert web["empty"]["prod"]["left"] == "web:2"
    assert web["empty"]["prod"]["revoked"]["reason"] == "CVE-2026-0001"
    monkeypatch.setenv("KILN_HOME", str(workspace.home.root))
    text = CliRunner(env=WHOLE_ROWS).invoke(where_command, []).output
    assert "- (web:2 revoked through base:1: CVE-2026-0001)" in text
    assert "- (every version revoked)" in text
    named = CliRunner(env=WHOLE_ROWS).invoke(where_command, ["web"]).output
    assert "web:1" in named and "web:2" in named and "left prod when revoked" in named


def test_where_columns_follow_the_pipeline_and_show_channels_never_used(
    workspace: Workspace,
) -> None:
    write_policy(workspace.home.root, PIPELINE)
    add_image(workspace, "web", 1)
    lifecycle.promote(workspace, "web:1", "prod", force=True)
    lifecycle.promote(workspace, "web:1", "dev")
    matrix = trace.where(workspace)
    assert matrix["channels"] == ["dev", "staging", "prod", "qa"]
    [web] = matrix["images"]
    assert web["channels"]["staging"] is None and web["channels"]["prod"]["ref"] == "web:1"
