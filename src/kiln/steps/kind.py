"""What a step kind declares: its options model, version, how it applies, what it reads.

The registry (:mod:`kiln.steps`) holds one :class:`Kind` per step kind. Everything else
follows from it: the recipe's ``Step`` union, the loader's checks of input files, the
cache key's digests of them and the provenance that names them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from kiln.schema import Model
from kiln.steps.target import Target


class StepModel(Model):
    """The options of one step: a table of ``[[steps]]`` holding its kind's key."""


M = TypeVar("M", bound=StepModel)


@dataclass(frozen=True)
class Input:
    """A file or folder beside the recipe that a step reads.

    ``key`` is the step's key holding the path (relative to the recipe's folder) as a
    recipe spells it; ``label`` names the input in the cache key and in provenance
    (``steps[N].<label>``). ``kind`` says what is read: ``file``, a regular file;
    ``tree``, a file or a folder with all it holds; ``folder``, the whole folder that
    holds the file named (a playbook reads templates and roles beside it). Entries whose
    names end with one of ``skip`` are not read, so they do not count.
    """

    key: str
    label: str
    kind: Literal["file", "tree", "folder"]
    skip: tuple[str, ...] = ()

    def locate(self, folder: Path, relative: str) -> Path:
        """The file or folder read, every symlink resolved."""
        path = Path(os.path.realpath(folder / relative))
        return path.parent if self.kind == "folder" else path


@dataclass(frozen=True)
class Kind(Generic[M]):
    """One step kind. ``name`` is also the key that marks a step table as this kind.

    Bump ``version`` when a change to the kind changes what it writes into an image;
    it is part of every cache key, so images built with the kind are baked again.
    """

    name: str
    model: type[M]
    version: int
    apply: Callable[[Target, M, int], None]
    inputs: tuple[Input, ...] = ()

    def paths(self, step: M) -> list[tuple[Input, str]]:
        """Each input of a validated step, with the path it names."""
        fields = {info.alias or name: name for name, info in self.model.model_fields.items()}
        return [(item, getattr(step, fields[item.key])) for item in self.inputs]

    def raw_paths(self, values: Mapping[str, Any]) -> list[tuple[Input, object]]:
        """Each input of a step table as read from TOML, before validation (any type)."""
        return [(item, values[item.key]) for item in self.inputs if item.key in values]
