"""Applying a recipe to a running machine instead of a build root.

``kiln test --converge`` re-applies an image's steps to a machine booted from it, to see
whether a second run changes anything. Configure-on-demand (the baseline ``bench/spinup.py``
measures baked images against) boots the parent image and applies the whole recipe at
boot: packages, steps, then enables and restarts the services.

Steps are the bake's own (kiln.steps), applied to the machine as a target: the machine's
overlay mount is the root (``copy`` writes through it, like the bake's copy), commands run
inside with the host's network (so the package mirror is reachable) and its resolv.conf and
the bake's environment, and kiln's own Ansible is bound at the same path (the machine must
have been launched with the recipe's folder, which binds both).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kiln import proc, steps
from kiln.machines import enter
from kiln.machines.folder import Folder, State
from kiln.recipe import RecipeFile
from kiln.sandbox import APT_OPTIONS, BUILD_ENV
from kiln.steps.target import Target, Tooling


def _inside(state: State, command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    result = enter.run(
        state.leader.pid, command, env={**BUILD_ENV, **(env or {})}, host_network=True
    )
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise proc.CommandError(command, result.returncode, output)
    return output


def machine_target(folder: Folder, state: State, recipe: RecipeFile) -> Target:
    """The machine as a step target: its overlay mount as the root, commands run inside.

    kiln's tooling is visible only if the machine was launched with this recipe's folder
    bound in (``kiln test --converge`` launches it so); it then sees the whole folder."""

    def run(command: Sequence[str], env: Mapping[str, str]) -> None:
        _inside(state, command, env)

    tooling = None
    if state.tooling and Path(state.recipe_folder) == recipe.folder:
        tooling = Tooling(Path(sys.prefix), lambda command, env, _part: run(command, env))
    return Target(f"machine {state.name}", folder.root, recipe.folder, run, tooling)


def apply_steps(
    folder: Folder, state: State, recipe: RecipeFile, log: Callable[[str], None]
) -> None:
    target = machine_target(folder, state, recipe)
    for index, step in enumerate(recipe.recipe.steps):
        kind = steps.kind_of(step).name
        log(f"steps[{index}] {kind}")
        steps.apply_at(target, step, index, recipe.where("steps", index))


def install_packages(state: State, packages: tuple[str, ...], log: Callable[[str], None]) -> None:
    if not packages:
        return
    log("apt-get update")
    _inside(state, ["apt-get", *APT_OPTIONS, "update"])
    log(f"apt-get install {' '.join(packages)}")
    _inside(state, ["apt-get", *APT_OPTIONS, "install", "--yes", *packages])


def restart_services(state: State, recipe: RecipeFile, log: Callable[[str], None]) -> None:
    """Enable the recipe's services and (re)start them with the configuration just made."""
    units = recipe.recipe.services.enable
    if not units:
        return
    log(f"systemctl enable, restart {' '.join(units)}")
    _inside(state, ["systemctl", "daemon-reload"])
    _inside(state, ["systemctl", "enable", *units])
    _inside(state, ["systemctl", "restart", *units])
