"""A propagation run's rows in a real SQLite catalog (kiln.catalog.propagations): a run is
found again until it is done, each item's state change is committed with its detail, an
end is a ``propagated`` event, and the plan's questions read the same rows."""

from __future__ import annotations

import json

from kiln.app.workspace import Workspace
from kiln.catalog import propagations
from kiln.catalog.propagations import DONE, NewItem
from tests.unit.lifecycle_rows import add_image, workspace

__all__ = ["workspace"]  # the fixture


def items() -> list[NewItem]:
    return [
        NewItem(
            1, 1, "web", "/r/web.toml", "base", "base changed", "planned", {"current": "web:1"}
        ),
        NewItem(2, 2, "shop", "/r/shop.toml", "web", "web changed", "planned", {}),
    ]


def test_a_run_is_continued_until_it_is_done(workspace: Workspace) -> None:
    catalog, lookup = workspace.catalog, workspace.lookup
    digest = "sha256:" + "a" * 64
    assert not propagations.has_unfinished(lookup, digest, "")
    run = propagations.open_run(catalog, "base:2", digest, "", {"parallel": 1}, items())
    assert not run.continued
    assert [(i.position, i.name, i.state, i.detail) for i in run.items] == [
        (1, "web", "planned", {"current": "web:1"}),
        (2, "shop", "planned", {}),
    ]
    assert propagations.has_unfinished(lookup, digest, "")
    assert not propagations.has_unfinished(lookup, digest, "prod")  # another channel's run

    web = run.items[0]
    propagations.save_item(catalog, run.id, web.id, "web", "baked", "web:2", "sha256:w", {"a": 1})
    again = propagations.open_run(catalog, "base:2", digest, "", {}, [])  # the items it holds
    assert again.continued and again.id == run.id
    first = again.items[0]
    assert (first.state, first.ref, first.detail) == ("baked", "web:2", {"a": 1})
    assert [i.state for i in again.items] == ["baked", "planned"]

    propagations.finish_run(catalog, run.id, DONE)
    assert not propagations.has_unfinished(lookup, digest, "")
    fresh = propagations.open_run(catalog, "base:2", digest, "", {}, items())
    assert not fresh.continued and fresh.id != run.id


def test_an_items_end_is_an_event_with_its_version(workspace: Workspace) -> None:
    run = propagations.open_run(workspace.catalog, "base:2", "sha256:o", "", {}, items())
    web = run.items[0]
    event = {"origin": "base:2", "state": "tested", "propagation": run.id}
    propagations.save_item(
        workspace.catalog, run.id, web.id, "web", "tested", "web:7", "sha256:w", {}, event
    )
    rows = workspace.lookup.rows(
        "SELECT name, version, digest, detail FROM events WHERE kind = 'propagated'"
    )
    assert [(name, version, digest) for name, version, digest, _ in rows] == [
        ("web", 7, "sha256:w")
    ]
    assert json.loads(rows[0][3])["propagation"] == run.id


def test_the_plan_reads_images_and_the_parents_their_bakes_recorded(
    workspace: Workspace,
) -> None:
    base = add_image(workspace, "base", 1)
    web = add_image(workspace, "web", 1, base)
    rows = propagations.plan_rows(workspace.lookup)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (base.id, "base", 1, None, base.digest),
        (web.id, "web", 1, base.id, web.digest),
    ]
    assert propagations.image_id(workspace.lookup, web.digest) == web.id
    assert propagations.image_id(workspace.lookup, "sha256:" + "0" * 64) is None
    assert propagations.parents_recorded(workspace.lookup, [("web", 1)]) == {}  # no bake event
