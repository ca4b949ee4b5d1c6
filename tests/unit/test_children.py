"""Every child process kiln starts goes through kiln.proc, and starts from its one
environment, whether it runs on the host, in a build root or in a machine."""

from __future__ import annotations

import ast
from pathlib import Path

from kiln import proc, sandbox
from kiln.machines import enter

SRC = Path(__file__).resolve().parents[2] / "src" / "kiln"
# what starts a child without kiln.proc (os.execv* replaces kiln itself: kiln exec, logs)
STARTERS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput"},
    "os": {"system", "popen", "spawnv", "spawnve", "spawnvp", "posix_spawn", "fork"},
}


def starts(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        called = node.func if isinstance(node, ast.Call) else None  # a type is no child
        if (
            isinstance(called, ast.Attribute)
            and isinstance(called.value, ast.Name)
            and called.attr in STARTERS.get(called.value.id, set())
        ):
            found.append((called.lineno, f"{called.value.id}.{called.attr}"))
        if isinstance(node, ast.ImportFrom) and node.module in STARTERS:
            names = {alias.name for alias in node.names} & STARTERS[node.module]
            found += [(node.lineno, f"from {node.module} import {name}") for name in names]
    return found


def test_the_scan_finds_a_child_started_by_hand() -> None:
    planted = (
        "import subprocess\nfrom os import system\n"
        "child: subprocess.Popen[bytes] = subprocess.Popen(['true'])\n"
    )
    assert sorted(starts(ast.parse(planted))) == [
        (2, "from os import system"),
        (3, "subprocess.Popen"),
    ]


def test_no_module_but_proc_starts_a_child() -> None:
    found = [
        f"{path.relative_to(SRC)}:{line}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "proc.py"
        for line, what in starts(ast.parse(path.read_text()))
    ]
    assert found == []


def test_every_child_starts_from_one_environment() -> None:
    assert proc.BASE_ENV == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    host = proc.environment()
    assert {key: host[key] for key in proc.BASE_ENV} == proc.BASE_ENV
    assert sandbox.BUILD_ENV == {**proc.BASE_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    inside = enter.argv(1, ["true"])
    given = inside[inside.index("-i") + 1 : inside.index("true")]
    assert given == sorted(f"{key}={value}" for key, value in proc.BASE_ENV.items())
    # the environment is spelled in kiln.proc alone
    spelled = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "proc.py" and "/usr/local/sbin:/usr/local/bin" in path.read_text()
    ]
    assert spelled == []
