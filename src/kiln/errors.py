"""The error hierarchy. Library code raises these; only the CLI's main() formats them.

Every error says what happened and, through ``hint``, what to do next. ``exit_code`` is
2 for bad input (the user can fix the recipe or the arguments) and 1 for an operation
that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class KilnError(Exception):
    """Base class: an operation failed (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(KilnError):
    """The user's input is wrong: a recipe, a reference, an argument (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is (file:line and key path) and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class RecipeError(BadInput):
    """A recipe failed validation; carries every problem found, not just the first."""

    def __init__(
        self, problems: Sequence[Problem], hint: str | None = None, what: str = "recipe"
    ) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{what} has {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in self.problems), hint)


class NotFound(BadInput):
    """A reference (image, machine, file) names nothing that exists."""


class StoreError(KilnError):
    """The store or catalog is inconsistent or could not be written."""


class StepFailed(KilnError):
    """A build step failed inside the build root."""
