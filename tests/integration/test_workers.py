"""Workers and jobs on a shared PostgreSQL catalog: two KILN_HOMEs stand for two hosts,
each running `kiln worker` as a process of its own, as a team would run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench.postgres import Postgres
from tests.integration.conftest import EXAMPLES, Host, Workers, until

SLOW_STEP = '\n[[steps]]\nrun = "sleep 5"\n'


def hosts(tmp_path: Path, postgres: Postgres) -> tuple[Host, Host]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    url = postgres.database()
    return Host(tmp_path / "host-a", url), Host(tmp_path / "host-b", url)


def job(host: Host, job_id: int) -> dict[str, Any]:
    found = [j for j in host.json("jobs") if j["id"] == job_id]
    assert len(found) == 1
    first: dict[str, Any] = found[0]
    return first


def test_catalog_upgrade_installs_the_job_schema_once(tmp_path: Path, postgres: Postgres) -> None:
    a, _ = hosts(tmp_path, postgres)
    status = a.json("catalog", "status")
    assert status["jobs"]["supported"] and not status["jobs"]["installed"]
    first = a.json("catalog", "upgrade")
    assert first["jobs"]["installed"] and first["jobs"]["installed_now"]
    again = a.json("catalog", "upgrade")
    assert again["jobs"]["installed"] and not again["jobs"]["installed_now"]
    assert again["from_state"] == "current"
    status = a.json("catalog", "status")
    assert status["jobs"] == {
        "schema": "kiln_jobs",
        "supported": True,
        "installed": True,
        "procrastinate": "3.10.0",
    }
    # nothing of the queue's in public, where Alembic's autogenerate would drop it
    import psycopg

    from kiln.catalog.jobschema import conninfo

    with psycopg.connect(conninfo(a.url)) as connection:
        tables = connection.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE tablename LIKE '%job%'"
        ).fetchall()
        unpinned = connection.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'kiln_jobs' "
            "AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=kiln_jobs']"
        ).fetchall()
    assert unpinned == []  # its triggers work from any session's search_path
    assert {schema for schema, _ in tables} == {"kiln_jobs"}
    assert ("kiln_jobs", "procrastinate_jobs") in tables


def _commit(repo: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for words in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "tiny"]):
        subprocess.run(["git", "-C", str(repo), *words], env=env, check=True)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    return head.stdout.strip()


def _children_of(recipe: Path) -> list[int]:
    """Processes whose command line names the recipe (a bake of it still running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(recipe)) in words and b"bake" in words:
            found.append(int(entry.name))
    return found


def test_a_killed_workers_job_runs_once_on_the_other_and_locks_hold(
    tmp_path: Path, postgres: Postgres, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = hosts(tmp_path, postgres)
    a.run("catalog", "upgrade")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copytree(EXAMPLES / "tiny", recipes / "tiny")
    recipe = recipes / "tiny.toml"
    recipe.write_text((EXAMPLES / "tiny.toml").read_text() + SLOW_STEP)

    worker_a = workers.start(a)
    monkeypatch.setenv("KILN_CATALOG_URL", a.url)
    from kiln.app.jobs import defer
    from kiln.app.workspace import opened
    from kiln.home import Home

    with opened(Home(a.home)) as workspace:
        baking = defer(workspace, "kiln.bake", {"path": str(recipe)})
    assert baking.deferred and baking.lock == "tiny"
    running = until(
        "the bake to run on host a",
        lambda: (j := job(a, baking.job))["state"] == "running" and j["home"] == str(a.home),
        20,
        workers,
    )
    assert running
    # a job for the same name waits for the lock; a second one is not queued beside it
    waiting = b.json("propagate", "tiny", "--queue")
    assert waiting["deferred"] and waiting["task"] == "kiln.propagate"
    assert waiting["queue"] == "default" and waiting["lock"] == "tiny"
    again = b.json("propagate", "tiny", "--queue")
    assert again == {**waiting, "deferred": False}
    text = b.run("propagate", "tiny", "--queue").stdout
    assert f"job {waiting['job']}" in text and "already waits" in text

    worker_b = workers.start(b, "--stop-timeout", "0")
    time.sleep(1.5)  # the bake is in its `sleep 5` step
    worker_a.kill()
    worker_a.wait()
    assert job(b, waiting["job"])["state"] == "queued"  # the lock still holds it

    # host b's worker finds the job of the dead worker and runs it again ...
    until(
        "the bake to run again on host b",
        lambda: (j := job(b, baking.job))["state"] == "running" and j["home"] == str(b.home),
        30,
        workers,
    )
    time.sleep(1)
    # ... and, stopped (SIGTERM, --stop-timeout 0), gives it back for another worker
    assert workers.stop(worker_b) == 0
    assert _children_of(recipe) == []  # the killed worker's child and b's both stopped
    assert job(b, baking.job)["state"] == "queued"
    c, d = Host(tmp_path / "host-c", a.url), Host(tmp_path / "host-d", a.url)
    worker_c = workers.start(c)
    until(
        "the bake to run on host c",
        lambda: (j := job(c, baking.job))["state"] == "running" and j["home"] == str(c.home),
        30,
        workers,
    )
    worker_d = workers.start(d)
    # stopped with the default --stop-timeout, host c finishes its job, beating its heart
    # meanwhile: host d, watching, does not take the job from it
    assert workers.stop(worker_c) == 0
    done = job(c, baking.job)
    assert done["state"] == "done", c.run("jobs", "logs", str(baking.job)).stdout
    assert done["home"] == str(c.home) and done["runs"] == 3 and done["host"]
    logs = c.json("jobs", "logs", str(baking.job))
    killed, stopped, finished = logs["log"]
    assert killed["home"] == str(a.home) and killed["state"] == "running"  # it died mid-run
    assert stopped["home"] == str(b.home) and stopped["state"] == "abandoned"
    assert finished["home"] == str(c.home) and finished["state"] == "done"
    assert finished["exit_code"] == 0 and '"ref": "tiny:' in finished["output"]
    shown = c.run("jobs", "logs", str(baking.job))
    assert '"cached": false' in shown.stdout and "--- run 3 on" in shown.stderr
    # baked once: the interrupted bakes took their versions back
    images = [i for i in c.json("images") if i["name"] == "tiny"]
    assert len(images) == 1, images

    propagated = until(
        "the propagation to run after the bake",
        lambda: (j := job(d, waiting["job"]))["state"] in ("done", "failed") and j,
        30,
        workers,
    )
    assert propagated["state"] == "done", d.run("jobs", "logs", str(waiting["job"])).stdout
    assert propagated["started_at"] >= done["finished_at"]
    listed = d.json("jobs", "--state", "done")
    assert {j["id"] for j in listed} == {baking.job, waiting["job"]}

    # a bake of a git commit: cloned into KILN_HOME/tmp, checked out detached, removed
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "tiny", repo / "tiny")
    shutil.copy(EXAMPLES / "tiny.toml", repo / "tiny.toml")
    commit = _commit(repo)
    with opened(Home(d.home)) as workspace:
        from_git = defer(
            workspace,
            "kiln.bake",
            {"git": f"file://{repo}", "commit": commit, "recipe": "tiny.toml"},
        )
        missing = defer(workspace, "kiln.bake", {"git": str(repo), "commit": "f" * 40})
    assert from_git.lock == f"git:file://{repo}@{commit}"
    baked = until(
        "the git bake",
        lambda: (j := job(d, from_git.job))["state"] in ("done", "failed") and j,
        30,
        workers,
    )
    assert baked["state"] == "done", d.run("jobs", "logs", str(from_git.job)).stdout
    output = d.run("jobs", "logs", str(from_git.job)).stdout
    assert f"checkout --quiet --detach {commit}" in output and '"ref": "tiny:' in output
    failed = until(
        "the bake of a commit the repository lacks",
        lambda: (j := job(d, missing.job))["state"] in ("done", "failed") and j,
        30,
        workers,
    )
    assert failed["state"] == "failed"
    assert [j["id"] for j in d.json("jobs", "--state", "failed")] == [missing.job]
    (run,) = d.json("jobs", "logs", str(missing.job))["log"]
    assert "error: git checkout failed (exit 128)" in run["output"] and run["exit_code"] == 128
    assert workers.stop(worker_d) == 0
    for host in (c, d):  # scratch clones and logs removed
        assert list((host.home / "tmp").glob("job-*")) == []
    # only the SIGKILLed worker's job was taken from it; the stopping one kept beating
    assert workers.logs().count("back in the queue") == 1


def test_a_periodic_job_runs_once_per_period_with_two_workers(
    tmp_path: Path, postgres: Postgres, workers: Workers
) -> None:
    a, b = hosts(tmp_path, postgres)
    a.run("catalog", "upgrade")
    every_two = "--cron=prove=* * * * * */2"
    started = [workers.start(a, every_two), workers.start(b, every_two)]
    # rows written by someone who can write the queue's tables: nothing of them runs
    pwned = tmp_path / "pwned"
    import psycopg
    from psycopg.types.json import Jsonb

    from kiln.catalog.jobschema import conninfo

    hostile = [
        ("kiln.bake", {"path": str(tmp_path), "argv": ["touch", str(pwned)]}),
        ("kiln.test", {"ref": f"--config={pwned}"}),
        ("builtin:procrastinate.builtin_tasks.remove_old_jobs", {"max_hours": 0}),
    ]
    with psycopg.connect(conninfo(a.url)) as connection:
        for task, args in hostile:
            connection.execute(
                "INSERT INTO kiln_jobs.procrastinate_jobs (queue_name, task_name, args) "
                "VALUES ('default', %s, %s)",
                (task, Jsonb(args)),
            )
    until(
        "three periods of proofs",
        lambda: len({j["args"].get("timestamp") for j in a.json("jobs")} - {None}) >= 3,
        20,
        workers,
    )
    assert [workers.stop(child) for child in started] == [0, 0]
    found = a.json("jobs")
    refused = [j for j in found if j["task"] != "kiln.prove"]
    assert len(refused) == len(hostile)
    assert {j["state"] for j in refused} == {"failed"} and {j["runs"] for j in refused} == {0}
    assert not pwned.exists()
    found = [j for j in found if j["task"] == "kiln.prove"]
    stamps = [j["args"]["timestamp"] for j in found]
    assert len(stamps) == len(set(stamps)), stamps  # each period's job once
    done = [j for j in found if j["state"] == "done"]
    assert len(done) >= 2
    assert {j["home"] for j in done} <= {str(a.home), str(b.home)}
    output = a.run("jobs", "logs", str(done[0]["id"])).stdout
    assert "nothing to prove" in output
