"""`ansible`: apply a playbook to the target with the controller's ansible-core.

The playbook runs with ``-c local`` inside the target (systemd-nspawn for a bake, the
booted machine for a re-apply), so facts are real and any service it starts lives in the
container. kiln's own virtualenv is visible read-only at the same path, and the playbook's
folder where the target's tooling shows it (a bake binds it at /run/kiln/ansible). It runs
on the root's /usr/bin/python3, so the image needs python3 (the same minor version as the
host's).

The playbook's whole folder is an input (templates, files, roles beside it), but not
recipes and locks that happen to share it: they are never a playbook's input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from kiln.errors import BadInput, KilnError
from kiln.rootpath import Root
from kiln.schema import MAX_EXTRA_VARS, path_bounds
from kiln.steps.kind import Input, Kind, StepModel
from kiln.steps.target import Target

VERSION = 1
PLAYBOOK = Input("ansible", "playbook", "file")
FOLDER = Input("ansible", "ansible", "folder", skip=(".toml", ".toml.lock"))
INPUTS = (PLAYBOOK, FOLDER)
ANSIBLE_HOME = "/run/kiln/ansible-home"


ENV = {
    "ANSIBLE_HOME": ANSIBLE_HOME,
    "ANSIBLE_LOCAL_TEMP": f"{ANSIBLE_HOME}/tmp",
    "ANSIBLE_REMOTE_TEMP": f"{ANSIBLE_HOME}/tmp",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
    "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class AnsibleStep(StepModel):
    """Apply an Ansible playbook to the build root with ansible-core."""

    ansible: str = Field(min_length=1)
    extra_vars: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ansible")
    @classmethod
    def _playbook(cls, value: str) -> str:
        path_bounds(value)
        if not value.endswith((".yml", ".yaml")):
            raise ValueError("a playbook is a .yml or .yaml file")
        return value

    @field_validator("extra_vars")
    @classmethod
    def _json(cls, value: dict[str, Any]) -> dict[str, Any]:
        """They reach ansible-playbook as one JSON argument: JSON values only, bounded."""
        todo: list[object] = [value]
        while todo:
            item = todo.pop()
            if isinstance(item, dict):
                todo.extend(item.values())
            elif isinstance(item, list):
                todo.extend(item)
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError("JSON has no inf or nan; quote it as a string")
            elif not isinstance(item, str | int | float | bool):
                raise ValueError(
                    f"a {type(item).__name__} is not a JSON value; quote dates and times"
                )
        size = len(json.dumps(value))
        if size > MAX_EXTRA_VARS:
            raise ValueError(
                f"{size} bytes of JSON; at most {MAX_EXTRA_VARS} fit on a command line"
            )
        return value


def playbook_command(venv: Path, playbook: str, extra_vars: dict[str, Any]) -> list[str]:
    """ansible-playbook from kiln's venv against the root it runs in (``playbook`` is the
    path inside)."""
    command = [
        str(venv / "bin" / "ansible-playbook"),
        "-c",
        "local",
        "-i",
        "localhost,",
        "--limit",
        "localhost",
        playbook,
    ]
    if extra_vars:
        command += ["--extra-vars", json.dumps(extra_vars, sort_keys=True)]
    return command


def apply(target: Target, step: AnsibleStep, index: int) -> None:
    tooling = target.tooling
    if tooling is None:
        raise KilnError(
            f"{target.name} was not launched with {target.folder} bound in",
            hint="kiln test --converge launches its machine so; a plain kiln run does not",
        )
    if not (tooling.venv / "bin" / "ansible-playbook").exists():
        raise BadInput(
            f"ansible-playbook is not installed in {tooling.venv}",
            hint="run scripts/quickstart, which installs ansible-core",
        )
    with Root(target.root) as root:
        has_python = root.exists("/usr/bin/python3", follow=True)
    if not has_python:
        raise BadInput(
            f"steps[{index}]: the ansible step needs python3 in the image",
            hint="add python3 to [packages] apt (modules run with the image's own python)",
        )
    playbook = PLAYBOOK.locate(target.folder, step.ansible)
    if not playbook.is_relative_to(target.folder):
        raise BadInput(f"the playbook {playbook} is outside the recipe's folder {target.folder}")
    part = str(playbook.parent.relative_to(target.folder))
    command = playbook_command(
        tooling.venv, f"{tooling.seen(part)}/{playbook.name}", step.extra_vars
    )
    tooling.run(command, ENV, part)


KIND = Kind("ansible", AnsibleStep, VERSION, apply, INPUTS)
