"""`run`: a shell command inside the build root."""

from __future__ import annotations

from kiln.bake.context import BuildContext
from kiln.errors import BadInput
from kiln.recipe.models import RunStep

VERSION = 1


def apply(context: BuildContext, step: RunStep, index: int) -> None:
    shell = context.root / step.shell[0].lstrip("/")
    if not (shell.exists() or shell.is_symlink()):
        raise BadInput(
            f"{step.shell[0]} is not in the image",
            hint='set shell = ["/path/to/shell", "-c"] on the step',
        )
    context.sandbox.run([*step.shell, step.run], env=step.env)
