"""The error hierarchy. Library code raises these; only the CLI's main() formats them.

Every error says what happened and, through ``hint``, what to do next. ``exit_code`` is
2 for bad input (the user can fix the recipe or the arguments) and 1 for an operation
that failed.
"""

from __future__ import annotations

import errno
import os
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


def shown(text: str, limit: int = 64) -> str:
    """A value a user gave, quoted for a message: cut, with its length, when it is long, so
    a hostile 5,000-character name does not fill the screen."""
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text)} characters)"


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
    """A step of a recipe failed in a build root or a machine: exit code 1, or 2 when the
    step refused its input (a copy source that is a FIFO, a shell the image lacks)."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


NO_SPACE = "No space left on device"
DISK_FULL_MARKERS = (NO_SPACE, "database or disk is full", "Disk quota exceeded")


def disk_full(text: str) -> bool:
    """Whether an error's text (an OSError, a tool's output, SQLite's) says the disk is full."""
    return any(marker in text for marker in DISK_FULL_MARKERS)


def space_hint(path: str | None = None) -> str:
    where = path or os.environ.get("KILN_HOME") or "/var/lib/kiln"
    return (
        f"free space on the file system that holds {where} (df -h {where}); "
        "kiln gc removes what dead bakes left behind"
    )


_HINTS = {
    errno.EACCES: "check the path's permissions (kiln runs as root: a read-only or "
    "root-squashed mount refuses it too)",
    errno.EPERM: "the kernel refused the operation: check the path's attributes "
    "(chattr +i) and the mount's options",
    errno.EROFS: "the file system is mounted read-only: remount it read-write or set "
    "KILN_HOME to a writable place",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and try again",
    errno.ENFILE: "the system has too many open files: try again when it has fewer",
    errno.ENOMEM: "the system is out of memory: try again with more free memory",
    errno.ENAMETOOLONG: "shorten the path (KILN_HOME or the recipe's folder)",
    errno.EIO: "the disk reported an I/O error: check it (dmesg), then run kiln fsck",
}


def from_os_error(exc: OSError, doing: str) -> KilnError:
    """One kiln error for an OSError that reached the top: what failed, where, what to do.

    ``doing`` names the operation, e.g. 'kiln bake'.
    """
    path = exc.filename if isinstance(exc.filename, str | bytes) else None
    shown = os.fsdecode(path) if path is not None else None
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        where = f" writing {shown}" if shown else ""
        directory = os.path.dirname(shown) if shown else None
        return KilnError(f"{doing}: {what}{where}", hint=space_hint(directory))
    where = f" on {shown}" if shown else ""
    if shown and isinstance(exc.filename2, str | bytes):
        where += f" -> {os.fsdecode(exc.filename2)}"
    code = errno.errorcode.get(exc.errno or 0)
    return KilnError(
        f"{doing}: {reason[:1].lower()}{reason[1:]}{where}" + (f" ({code})" if code else ""),
        hint=_HINTS.get(
            exc.errno or 0, "check the path; if it is inside KILN_HOME, kiln fsck checks the store"
        ),
    )
