"""Step kinds: one registry, one module per kind.

A kind's module holds its options model, ``VERSION``, ``apply(target, step, index)`` and
the inputs it reads beside the recipe, gathered in a ``KIND``
(:class:`~kiln.steps.kind.Kind`). Naming the module in :data:`KIND_MODULES` is all it
takes to add one: the recipe's ``Step`` union, the loader's input checks, the cache key
and provenance all read this registry. A step applies to a
:class:`~kiln.steps.target.Target`, so the same code serves a bake and a machine.

The kind modules load on first use: ``kiln run`` needs only :mod:`kiln.steps.target`
and does not import pydantic.
"""

from __future__ import annotations

import functools
import importlib
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiln import proc
from kiln.errors import BadInput, KilnError, StepFailed, from_os_error

if TYPE_CHECKING:
    from kiln.steps.kind import Input, Kind
    from kiln.steps.target import Target

KIND_MODULES = ("kiln.steps.run", "kiln.steps.copy", "kiln.steps.ansible")


@functools.cache
def _load(modules: tuple[str, ...]) -> tuple[Kind[Any], ...]:
    from kiln.steps.kind import Kind

    found = []
    for name in modules:
        kind = getattr(importlib.import_module(name), "KIND", None)
        if not isinstance(kind, Kind):
            raise TypeError(f"step module {name} has no KIND")
        found.append(kind)
    if len({kind.name for kind in found}) != len(found):
        raise TypeError(f"two step kinds share a name: {[kind.name for kind in found]}")
    return tuple(found)


def kinds() -> tuple[Kind[Any], ...]:
    """Every step kind, in the order a recipe's messages name them."""
    return _load(KIND_MODULES)


def names() -> tuple[str, ...]:
    return tuple(kind.name for kind in kinds())


def versions() -> dict[str, int]:
    """Each kind's version, for the cache key."""
    return {kind.name: kind.version for kind in kinds()}


def kind_of(step: object) -> Kind[Any]:
    """The kind of a validated step."""
    for kind in kinds():
        if type(step) is kind.model:
            return kind
    raise TypeError(f"{type(step).__name__} is not a registered step kind")


def apply(target: Target, step: object, index: int) -> None:
    """Apply ``step`` (the ``index``-th of its recipe) to ``target``."""
    kind_of(step).apply(target, step, index)


def apply_at(target: Target, step: object, index: int, where: str, hint: str | None = None) -> None:
    """Apply ``step`` as :func:`apply` does; a failure is one
    :class:`~kiln.errors.StepFailed` that says where the recipe holds the step (``where``,
    its file:line), which step and target it was, and for a command, what ran and how it
    ended. ``hint`` is for a command that failed. A step that refused its input (a
    :class:`~kiln.errors.BadInput`) keeps exit code 2."""
    what = f"{where}: steps[{index}] ({kind_of(step).name})"
    try:
        apply(target, step, index)
    except proc.CommandError as exc:
        raise StepFailed(
            f"{what} failed in {target.name} with exit code {exc.returncode}\n"
            f"  command: {shlex.join(exc.argv)}\n"
            f"--- last lines of output ---\n{proc.tail(exc.output)}",
            hint=hint,
        ) from None
    except KilnError as exc:
        raise StepFailed(
            f"{what} in {target.name}: {exc.message}",
            hint=exc.hint,
            exit_code=BadInput.exit_code if isinstance(exc, BadInput) else StepFailed.exit_code,
        ) from None
    except OSError as exc:
        failed = from_os_error(exc, f"{what} in {target.name}")
        raise StepFailed(failed.message, hint=failed.hint) from None


def inputs(step: object) -> list[tuple[Input, str]]:
    """The files beside the recipe that a validated step reads, with their paths."""
    return kind_of(step).paths(step)


def raw_inputs(values: Mapping[str, Any]) -> list[tuple[Input, object]]:
    """The inputs a step table read from TOML names, for every kind key it holds (a
    table with two is refused by the schema, and its inputs are still checked)."""
    return [found for kind in kinds() if kind.name in values for found in kind.raw_paths(values)]
