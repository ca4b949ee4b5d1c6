"""`ansible`: apply a playbook to the build root with the controller's ansible-core.

The playbook runs with ``-c local`` inside systemd-nspawn, so facts are real and any
service it starts lives and dies in the container. kiln's own virtualenv is bound
read-only at the same path; it runs on the root's /usr/bin/python3, so the image needs
python3 (the same minor version as the host's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kiln.bake.context import BuildContext
from kiln.errors import BadInput
from kiln.recipe.models import AnsibleStep
from kiln.rootpath import Root
from kiln.sandbox import Bind

VERSION = 1
PLAYBOOKS = "/run/kiln/ansible"
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


def playbook_command(playbook: str, extra_vars: dict[str, Any]) -> list[str]:
    """ansible-playbook from kiln's venv against the root it runs in (``playbook`` is the
    path inside); used for bakes and for re-applying steps to a machine."""
    command = [
        str(Path(sys.prefix) / "bin" / "ansible-playbook"),
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


def apply(context: BuildContext, step: AnsibleStep, index: int) -> None:
    playbook = context.recipe.resolve(step.ansible)
    venv = Path(sys.prefix)
    controller = venv / "bin" / "ansible-playbook"
    if not controller.exists():
        raise BadInput(
            f"ansible-playbook is not installed in {venv}",
            hint="run scripts/quickstart, which installs ansible-core",
        )
    with Root(context.root) as root:
        has_python = root.exists("/usr/bin/python3", follow=True)
    if not has_python:
        raise BadInput(
            f"steps[{index}]: the ansible step needs python3 in the image",
            hint="add python3 to [packages] apt (modules run with the image's own python)",
        )
    command = playbook_command(f"{PLAYBOOKS}/{playbook.name}", step.extra_vars)
    sandbox = context.sandbox.with_binds(Bind(venv, str(venv)), Bind(playbook.parent, PLAYBOOKS))
    sandbox.run(command, env=ENV)
