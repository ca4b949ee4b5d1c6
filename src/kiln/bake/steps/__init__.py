"""Step kinds: one module each, with a VERSION that goes into every cache key.

Bump a step's VERSION when a change to it changes what it writes into an image; every
image built with that step is then rebuilt on its next bake.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.bake.context import BuildContext
from kiln.bake.steps import ansible, copy, run
from kiln.recipe.models import AnsibleStep, CopyStep, RunStep

Apply = Callable[[BuildContext, Any, int], None]

REGISTRY: dict[type, tuple[str, Apply, int]] = {
    RunStep: ("run", run.apply, run.VERSION),
    CopyStep: ("copy", copy.apply, copy.VERSION),
    AnsibleStep: ("ansible", ansible.apply, ansible.VERSION),
}


def versions() -> dict[str, int]:
    return {name: version for name, _apply, version in REGISTRY.values()}


def apply(context: BuildContext, step: object, index: int) -> None:
    _name, fn, _version = REGISTRY[type(step)]
    fn(context, step, index)
