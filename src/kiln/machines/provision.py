"""Applying a recipe to a running machine instead of a build root.

``kiln test --converge`` re-applies an image's steps to a machine booted from it, to see
whether a second run changes anything. Configure-on-demand (the baseline ``bench/spinup.py``
measures baked images against) boots the parent image and applies the whole recipe at
boot: packages, steps, then enables and restarts the services.

Steps run as in a bake, only inside the machine: the host's network (so the package
mirror is reachable) and its resolv.conf, the same environment, kiln's own Ansible bound
at the same path (the machine must have been launched with the recipe's folder, which
binds both). ``copy`` writes through the machine's overlay mount, like the bake's copy.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from kiln import proc
from kiln.bake import steps as bake_steps
from kiln.bake.context import BuildContext, Options
from kiln.bake.packages import APT_OPTIONS
from kiln.bake.steps import ansible
from kiln.catalog import Catalog
from kiln.errors import KilnError, StepFailed
from kiln.home import Home
from kiln.machines import enter
from kiln.machines.folder import Folder, State
from kiln.machines.nspawn import RECIPE_TARGET
from kiln.recipe import AnsibleStep, CopyStep, RecipeFile, RunStep
from kiln.sandbox import BUILD_ENV
from kiln.store.layout import Layout


def _inside(state: State, command: list[str], env: dict[str, str] | None = None) -> str:
    result = enter.run(
        state.leader.pid, command, env={**BUILD_ENV, **(env or {})}, host_network=True
    )
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise proc.CommandError(command, result.returncode, output)
    return output


def _ansible(state: State, recipe: RecipeFile, step: AnsibleStep) -> None:
    playbook = recipe.resolve(step.ansible)
    if not state.tooling or Path(state.recipe_folder) != recipe.folder:
        raise KilnError(
            f"machine {state.name} was not launched with {recipe.folder} bound in",
            hint="kiln test --converge launches its machine so; a plain kiln run does not",
        )
    command = ansible.playbook_command(
        f"{RECIPE_TARGET}/{playbook.relative_to(recipe.folder)}", step.extra_vars
    )
    _inside(state, command, ansible.ENV)


def _copy_context(home: Home, catalog: Catalog, folder: Folder, recipe: RecipeFile) -> BuildContext:
    """A build context whose root is the machine's overlay mount (``folder/root``)."""
    context = BuildContext(
        home=home,
        layout=Layout(home.oci),
        catalog=catalog,
        recipe=recipe,
        options=Options(),
        cache_key="",
        parent=None,
        build_dir=folder.path,
        log=lambda _message: None,
    )
    assert context.root == folder.root
    return context


def apply_steps(
    home: Home,
    catalog: Catalog,
    folder: Folder,
    state: State,
    recipe: RecipeFile,
    log: Callable[[str], None],
) -> None:
    context = _copy_context(home, catalog, folder, recipe)
    for index, step in enumerate(recipe.recipe.steps):
        kind = bake_steps.REGISTRY[type(step)][0]
        log(f"steps[{index}] {kind}")
        try:
            if isinstance(step, RunStep):
                _inside(state, [*step.shell, step.run], dict(step.env))
            elif isinstance(step, CopyStep):
                bake_steps.apply(context, step, index)
            elif isinstance(step, AnsibleStep):
                _ansible(state, recipe, step)
        except proc.CommandError as exc:
            raise StepFailed(
                f"{recipe.where('steps', index)}: steps[{index}] ({kind}) failed in machine "
                f"{state.name} with exit code {exc.returncode}\n"
                f"  command: {shlex.join(exc.argv)}\n"
                f"--- last lines of output ---\n{proc.tail(exc.output)}"
            ) from None
        except OSError as exc:
            raise StepFailed(f"steps[{index}] ({kind}) in machine {state.name}: {exc}") from None


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
