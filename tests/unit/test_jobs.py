"""Jobs: each task's arguments are checked as the hostile input a queue row is, the argv
a worker runs is built from them alone, SQLite catalogs refuse the queue, and a policy's
[schedule] becomes procrastinate's periodic tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiln.app.jobs_args import SPECS, TASKS, argv, check, lock_of, queueing_lock_of, summary
from kiln.app.jobs_worker import schedule_of
from kiln.errors import BadInput
from kiln.lifecycle.policy import Schedule

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GOOD: dict[str, dict[str, Any]] = {
    "kiln.bake": {"path": "/srv/recipes/web.toml"},
    "kiln.test": {"ref": "web:3", "sets": ["upstream_url=http://x"]},
    "kiln.refresh": {"names": ["web"], "promote": "staging"},
    "kiln.propagate": {"ref": "base:2", "to": "prod"},
    "kiln.propagate_item": {"run": 4, "item": 17, "name": "web"},
    "kiln.prove": {"ref": "web@sha256:" + "a" * 64},
    "kiln.rollout": {"group": "front", "to": "web:4"},
}
HOSTILE: list[tuple[str, Any]] = [
    ("kiln.bake", {"path": "relative/web.toml"}),
    ("kiln.bake", {"path": "/srv/../etc/passwd"}),
    ("kiln.bake", {"path": "/srv/web\x00.toml"}),
    ("kiln.bake", {"path": "/srv/web.toml", "git": "https://example.invalid/r.git"}),
    ("kiln.bake", {"git": "https://example.invalid/r.git"}),  # no commit
    ("kiln.bake", {"git": "https://example.invalid/r.git", "commit": "main"}),
    ("kiln.bake", {"git": "https://example.invalid/r.git", "commit": COMMIT[:39]}),
    ("kiln.bake", {"git": "https://example.invalid/r.git", "commit": COMMIT.upper()}),
    ("kiln.bake", {"git": "ext::sh -c touch% /tmp/pwned", "commit": COMMIT}),
    ("kiln.bake", {"git": "--upload-pack=touch /tmp/pwned", "commit": COMMIT}),
    ("kiln.bake", {"git": "/srv/repo", "commit": COMMIT, "recipe": "../../etc"}),
    ("kiln.bake", {"git": "/srv/repo", "commit": COMMIT, "recipe": "/etc/passwd"}),
    ("kiln.bake", {"path": "/srv/web.toml", "no_cache": "yes"}),
    ("kiln.bake", {"path": "/srv/web.toml", "argv": ["sh", "-c", "id"]}),
    ("kiln.bake", {"path": "/srv/web.toml", "mirror": "--no-cache"}),
    ("kiln.test", {}),
    ("kiln.test", {"ref": "--converge"}),
    ("kiln.test", {"ref": "Web"}),
    ("kiln.test", {"ref": "web:3", "sets": ["no-equals"]}),
    ("kiln.test", {"ref": "web:3", "sets": "a=b"}),
    ("kiln.test", {"ref": "web:3", "sets": ["a=b\nc"]}),
    ("kiln.refresh", {"names": ["web;rm -rf /"]}),
    ("kiln.refresh", {"names": ["web"], "parallel": 0}),
    ("kiln.refresh", {"names": ["web"], "parallel": True}),
    ("kiln.refresh", {"names": ["web"], "max_failures": 10**9}),
    ("kiln.refresh", {"promote": "latest"}),
    ("kiln.refresh", {"policy": "kiln.toml"}),
    ("kiln.refresh", {"timestamp": "soon"}),
    ("kiln.propagate", {"ref": "base", "recipes": "recipes/"}),
    ("kiln.propagate", {"ref": 7}),
    ("kiln.propagate_item", {"run": 4, "item": 17}),
    ("kiln.propagate_item", {"run": 0, "item": 17, "name": "web"}),
    ("kiln.propagate_item", {"run": "4", "item": 17, "name": "web"}),
    ("kiln.propagate_item", {"run": 4, "item": 17, "name": "--web"}),
    ("kiln.prove", {"ref": "web", "timestamp": -1}),
    ("kiln.rollout", {"group": "-front"}),
    ("kiln.rollout", {"group": "front", "to": "web:0"}),
    ("kiln.nope", {}),
    ("kiln.bake", ["not", "a", "table"]),
]


@pytest.mark.parametrize("task", TASKS)
def test_good_arguments_pass_and_fill_every_default(task: str) -> None:
    job = check(task, GOOD[task])
    assert set(job.args) == set(SPECS[task])
    words = argv(job)
    assert words[-1] == "--json" and words[0] in {
        "bake",
        "test",
        "refresh",
        "propagate",
        "propagate-item",
        "rebuild",
        "rollout",
    }


@pytest.mark.parametrize(("task", "raw"), HOSTILE, ids=lambda v: repr(v)[:40])
def test_hostile_arguments_are_refused(task: str, raw: Any) -> None:
    with pytest.raises(BadInput):
        check(task, raw)


def test_the_argv_is_built_from_the_checked_values_alone() -> None:
    job = check(
        "kiln.refresh",
        {"names": ["web", "base"], "security_only": True, "promote": "staging", "parallel": 2},
    )
    assert argv(job) == [
        "refresh", "web", "base", "--parallel", "2", "--max-failures", "1",
        "--security-only", "--promote", "staging", "--json",
    ]  # fmt: skip
    proof = check("kiln.prove", {"ref": "web:3", "mirror": "deb http://m/ bookworm main"})
    assert argv(proof) == [
        "rebuild", "web:3", "--prove", "--mirror", "deb http://m/ bookworm main", "--json",
    ]  # fmt: skip
    git = check("kiln.bake", {"git": "https://example.invalid/r.git", "commit": COMMIT})
    assert argv(git, recipe=Path("/home/tmp/clone/tiny.toml"))[:2] == [
        "bake",
        "/home/tmp/clone/tiny.toml",
    ]


def test_locks_are_named_for_the_image(tmp_path: Path) -> None:
    recipe = tmp_path / "web.toml"
    recipe.write_text('[image]\nname = "web"\n')
    assert lock_of(check("kiln.bake", {"path": str(recipe)})) == "web"
    assert lock_of(check("kiln.bake", {"path": str(tmp_path)})) == f"path:{tmp_path}"
    assert lock_of(check("kiln.test", {"ref": "web:3"})) == "web"
    assert lock_of(check("kiln.propagate", {"ref": "web@sha256:" + "b" * 64})) == "web"
    assert lock_of(check("kiln.refresh", {"names": ["web"]})) == "web"
    assert lock_of(check("kiln.refresh", {})) == "refresh:all"
    assert lock_of(check("kiln.prove", {})) == "prove:channels"
    assert lock_of(check("kiln.rollout", {"group": "front"})) == "group:front"
    # one waiting job per task and name: a test waits behind a bake, it is not dropped
    assert queueing_lock_of(check("kiln.test", {"ref": "web:3"})) == "kiln.test:web"


def test_a_summary_of_hostile_arguments_stays_one_short_line() -> None:
    line = summary({"ref": "web\x1b[31m\nred", "sets": ["a=" + "x" * 500]})
    assert "\n" not in line and "\x1b" not in line and len(line) <= 60


def test_the_schedule_becomes_periodic_tasks() -> None:
    assert schedule_of(None) == {}
    assert schedule_of(Schedule()) == {}
    found = schedule_of(Schedule(refresh="daily", prove="weekly"))
    assert found == {"kiln.refresh": "0 3 * * *", "kiln.prove": "0 4 * * 1"}
    assert schedule_of(Schedule(prove="*/15 * * * *")) == {"kiln.prove": "*/15 * * * *"}
    # a worker's --cron overrides, with seconds as procrastinate's sixth field
    assert schedule_of(Schedule(prove="weekly"), {"prove": "* * * * * */2"}) == {
        "kiln.prove": "* * * * * */2"
    }
    with pytest.raises(BadInput):
        schedule_of(None, {"gc": "* * * * *"})
    with pytest.raises(BadInput):
        schedule_of(None, {"prove": "every day"})


def test_the_periodic_tasks_reach_procrastinate(tmp_path: Path) -> None:
    from kiln.app.jobs_run import Worker
    from kiln.app.jobs_worker import WorkerOptions, build_worker_app
    from kiln.home import Home

    worker = Worker(Home(tmp_path), None, "host", print)
    app = build_worker_app(
        "postgresql+psycopg://u@/db?host=/nowhere",
        worker,
        WorkerOptions(queues=["builds"]),
        {"kiln.refresh": "0 3 * * *"},
        tmp_path / "kiln.toml",
    )
    assert set(app.tasks) == set(SPECS)  # nothing else a row could name
    (periodic,) = app.periodic_registry.periodic_tasks.values()
    assert periodic.task.name == "kiln.refresh" and periodic.cron == "0 3 * * *"
    assert periodic.configure_kwargs == {
        "queue": "builds",
        "lock": "refresh:all",
        "queueing_lock": "kiln.refresh:refresh:all",
        "task_kwargs": {"policy": str(tmp_path / "kiln.toml")},  # the worker's own policy
    }


def _kiln(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KILN_CATALOG_URL"}
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        env={**env, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("worker",),
        ("jobs",),
        ("refresh", "--queue"),
        ("propagate", "web", "--queue=builds"),
        ("rebuild", "web:1", "--prove", "--queue"),
        ("rollout", "front", "--queue"),
    ],
    ids=" ".join,
)
def test_an_sqlite_catalog_refuses_the_queue(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _kiln(tmp_path / "home", *args)
    assert result.returncode == 2, result.stderr
    assert "SQLite" in result.stderr and "KILN_CATALOG_URL" in result.stderr
    assert "docs/sharing.md" in result.stderr
    assert not (tmp_path / "home" / "catalog.db").exists()
