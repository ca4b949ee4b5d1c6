"""What a step changes: a root, a way to run commands in it, and the recipe's folder.

A bake's target is its build root, commands run in a fresh systemd-nspawn each; a machine's
is its overlay mount, commands run inside the booted machine. A step sees only this, so
the same step serves a bake and a re-apply on a machine (``kiln test --converge``).

Commands that need kiln's own tooling (Ansible, from kiln's virtualenv) run through
:class:`Tooling`: the virtualenv at its own path, and the part of the recipe's folder they
read where :attr:`Tooling.seen` says.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.sandbox import Bind, Sandbox

RECIPE_TARGET = "/run/kiln/recipe"  # a machine's view of the recipe's folder
BAKE_SHARE = "/run/kiln/ansible"  # a bake's view of the one sub-folder a command reads

# argv and the environment to add; raises kiln.proc.CommandError when the command fails
Run = Callable[[Sequence[str], Mapping[str, str]], None]
# argv, the environment to add, and the sub-folder of the recipe's folder the command reads
ToolRun = Callable[[Sequence[str], Mapping[str, str], str], None]


def recipe_path(part: str | Path) -> str:
    """Where a path relative to the recipe's folder is seen inside a machine with tooling."""
    return posixpath.normpath(posixpath.join(RECIPE_TARGET, str(part)))


@dataclass(frozen=True)
class Tooling:
    """kiln's tooling, visible inside the target.

    ``run(argv, env, part)`` runs a command that sees ``venv`` at the same path and the
    recipe's sub-folder ``part`` at ``seen(part)``. A machine launched with tooling sees
    the whole folder at :data:`RECIPE_TARGET`; a bake binds that one part, at
    :data:`BAKE_SHARE`, so a command reads nothing the cache key does not count.
    """

    venv: Path
    run: ToolRun
    seen: Callable[[str], str] = recipe_path


@dataclass(frozen=True)
class Target:
    """The root a step changes and what it may use to change it."""

    name: str  # for messages: "the build root of web", "machine web-1"
    root: Path  # the tree as the host sees it (a build root, a machine's overlay mount)
    folder: Path  # the recipe's folder, symlinks resolved: where step inputs are read
    run: Run
    tooling: Tooling | None = None  # None: kiln's tooling is not visible inside

    @classmethod
    def sandboxed(cls, name: str, sandbox: Sandbox, folder: Path, venv: Path) -> Target:
        """A root that each command enters with a fresh systemd-nspawn (a bake)."""

        def run(argv: Sequence[str], env: Mapping[str, str]) -> None:
            inside(sandbox, argv, env)

        def tool_run(argv: Sequence[str], env: Mapping[str, str], part: str) -> None:
            binds = (Bind(venv, str(venv)), Bind(folder / part, BAKE_SHARE))
            inside(sandbox.with_binds(*binds), argv, env)

        tooling = Tooling(venv, tool_run, seen=lambda _part: BAKE_SHARE)
        return cls(name, sandbox.root, folder, run, tooling)


def inside(sandbox: Sandbox, argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Run ``argv`` in the sandbox; a failure names ``argv``, as a machine's command does,
    not the systemd-nspawn that ran it."""
    try:
        sandbox.run(argv, env=env)
    except proc.CommandError as exc:
        raise proc.CommandError(argv, exc.returncode, exc.output) from None
