"""`run`: a shell command inside the target (a build root, or a machine)."""

from __future__ import annotations

from pydantic import Field, field_validator

from kiln.errors import BadInput
from kiln.rootpath import Root
from kiln.schema import CONTROL_RE, ENV_RE
from kiln.steps.kind import Kind, StepModel
from kiln.steps.target import Target

VERSION = 1


class RunStep(StepModel):
    """Run a shell command inside the build root (systemd-nspawn)."""

    run: str = Field(min_length=1)
    shell: tuple[str, ...] = Field(default=("/bin/sh", "-c"), min_length=1)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("shell")
    @classmethod
    def _shell(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        first = value[0]
        if not first.startswith("/") or ".." in first.split("/") or CONTROL_RE.search(first):
            raise ValueError("the shell's first word is an absolute path in the image")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_RE.match(k)]
        if bad:
            names = ", ".join(map(repr, bad))
            raise ValueError(f"not environment variable names (letters, digits, '_'): {names}")
        return value


def apply(target: Target, step: RunStep, index: int) -> None:
    with Root(target.root) as root:
        present = root.exists(step.shell[0], follow=True)
    if not present:
        raise BadInput(
            f"{step.shell[0]} is not in the image",
            hint='set shell = ["/path/to/shell", "-c"] on the step',
        )
    target.run([*step.shell, step.run], step.env)


KIND = Kind("run", RunStep, VERSION, apply)
