"""The catalog's named questions answer what the use cases used to ask in their own SQL:
the newest version not revoked is one answer for the resolver, kiln where and kiln
outdated; the reads of kiln where, the gates and kiln outdated give the rows they name."""

from __future__ import annotations

from kiln import refs
from kiln.app import freshness, lifecycle, trace
from kiln.app.workspace import Workspace
from kiln.catalog import evidence, outdated, revocations, versions
from kiln.catalog import trace as read
from tests.unit.lifecycle_rows import add_image, add_machine, add_test_run, workspace

__all__ = ["workspace"]


def test_the_newest_usable_version_is_one_answer_for_every_reader(workspace: Workspace) -> None:
    base = [add_image(workspace, "base", n) for n in (1, 2, 3)]
    web = [add_image(workspace, "web", n, parent=base[n - 1]) for n in (1, 2)]
    lifecycle.revoke(workspace, "base:3", "bad build")
    lifecycle.revoke(workspace, "web:2", "built on a bad base")
    lookup = workspace.lookup
    newest = versions.newest_usable(lookup, None)
    assert newest == {"base": base[1].id, "web": web[0].id}
    assert versions.newest_usable(lookup, {"web"}) == {"web": web[0].id}
    assert lookup.image(refs.parse("base")).id == newest["base"]
    assert lookup.image(refs.parse("web")).id == newest["web"]
    matrix = {row["name"]: row for row in trace.where(workspace)["images"]}
    assert matrix["base"]["latest"]["ref"] == "base:2"
    assert matrix["web"]["latest"]["ref"] == "web:1"
    looked_at = {row.ref for row in freshness.targets(workspace, (), lifecycle.now_utc())}
    assert looked_at == {"base:2", "web:1"}


def test_every_version_revoked_leaves_the_name_out(workspace: Workspace) -> None:
    add_image(workspace, "base", 1)
    lifecycle.revoke(workspace, "base:1", "bad build")
    assert versions.newest_usable(workspace.lookup, {"base"}) == {}
    assert versions.first_usable([(3, "a"), (2, "a"), (1, "b")], {3}) == {"a": 2, "b": 1}


def test_the_reads_of_where_history_and_the_gates(workspace: Workspace) -> None:
    base = add_image(workspace, "base", 1)
    web = add_image(workspace, "web", 1, parent=base)
    add_machine(workspace, "web-1", web)
    add_test_run(workspace, web, ok=True)
    lookup = workspace.lookup
    assert [row[0] for row in read.machines(lookup)] == ["web-1"]
    assert read.names(lookup) == ["base", "web"]
    assert read.family(lookup, "web") == [web.id]
    assert set(read.created(lookup, [base.id, web.id, 999])) == {base.id, web.id}
    assert read.is_known(lookup, "web") and not read.is_known(lookup, "db")
    assert read.signed(lookup) == set()
    assert [row[0] for row in evidence.test_runs(lookup, web.digest)] == [True]
    assert evidence.newest_proof(lookup, web.digest) is None
    assert list(evidence.latest_proofs(lookup)) == []
    assert outdated.package_versions(lookup, [web.id]) == {web.id: []}
    lifecycle.revoke(workspace, "base:1", "bad build")
    assert [r.ref for r in revocations.unrestored(lookup)] == ["base:1"]
    assert revocations.last_revoked_of(lookup, "base") == base.id
    assert revocations.last_revoked_of(lookup, "web") is None
