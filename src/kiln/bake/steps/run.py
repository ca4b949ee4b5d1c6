"""`run`: a shell command inside the build root."""

from __future__ import annotations

from kiln.bake.context import BuildContext
from kiln.errors import BadInput
from kiln.recipe.models import RunStep
from kiln.rootpath import Root

VERSION = 1


def apply(context: BuildContext, step: RunStep, index: int) -> None:
    with Root(context.root) as root:
        present = root.exists(step.shell[0], follow=True)
    if not present:
        raise BadInput(
            f"{step.shell[0]} is not in the image",
            hint='set shell = ["/path/to/shell", "-c"] on the step',
        )
    context.sandbox.run([*step.shell, step.run], env=step.env)
