"""`kiln history` as a person reads it: one aligned row per event, every kind told in
words (never a Python repr of its detail), and a help text that names every kind kiln
records; ``--json`` keeps the detail as recorded."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kiln.app import lifecycle
from kiln.app.workspace import Workspace
from kiln.catalog import events
from kiln.cli.history import SENTENCES, history
from tests.unit.lifecycle_rows import add_image, workspace

# a pipe's whole rows, whatever COLUMNS the runner has (pytest-xdist's workers set 80)
WHOLE_ROWS: dict[str, str | None] = {"COLUMNS": None}

__all__ = ["workspace"]  # the fixture


def test_the_help_names_every_event_kind_and_each_has_its_sentence() -> None:
    text = " ".join(CliRunner(env=WHOLE_ROWS).invoke(history, ["--help"]).output.split())
    missing = [kind for kind in events.KINDS if kind not in text]
    assert missing == []
    assert list(SENTENCES) == list(events.KINDS)


def test_every_event_is_one_aligned_row_of_words(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = add_image(workspace, "base", 1)
    web1 = add_image(workspace, "web", 1, base)
    add_image(workspace, "web", 2, base)
    lifecycle.promote(workspace, "web:1", "prod")
    lifecycle.promote(workspace, "web:2", "prod")
    lifecycle.rollback(workspace, "web", "prod")
    lifecycle.revoke(workspace, "base:1", "CVE-2026-0001")
    with workspace.catalog.session() as session:
        events.record(
            session,
            "removed",
            "web",
            web1.version,
            web1.digest,
            by="gc",
            rules={"keep_last": 0, "keep_younger_than": None, "keep_channel_history": None},
            policy=None,
            machines=[],
            held=["web:prod"],
        )
        events.record(
            session,
            "refreshed",
            "web",
            3,
            "sha256:3",
            state="refreshed",
            previous="web:2",
            updates=[{"package": "openssl", "security": True}, {"package": "curl"}],
            error=None,
            promoted=None,
        )
    monkeypatch.setenv("KILN_HOME", str(workspace.home.root))
    out = CliRunner(env=WHOLE_ROWS).invoke(history, ["web"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["AT", "EVENT", "IMAGE", "MACHINE", "WHAT", "BY"]
    rows = lines[1:]
    assert len(rows) == 6
    for marker in ("{'", "['", "None", "=["):
        assert all(marker not in row for row in rows), marker
    column = lines[0].index("BY")
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in rows)
    text = "\n".join(rows)
    assert "prod back from web:2" in text
    assert "CVE-2026-0001; through base:1 (versions 1, 2)" in text
    assert "by gc (keep_last=0); channels held it: web:prod" in text
    assert "refreshed from web:2: 2 updates (1 security)" in text
    detail = json.loads(CliRunner().invoke(history, ["web", "--json"]).output)[-1]["detail"]
    assert detail["updates"][0] == {"package": "openssl", "security": True}
