"""Bounds on what a recipe, a lock file and their inputs may be, checked before use.

Recipes come from people kiln does not trust. A recipe or lock file is read only if it is
a regular file under a size limit, from the descriptor that was checked, never more than
the limit; every string in it is free of NUL bytes and bounded in size, tables and arrays
nest only so deep, and integers fit in 64 bits. Files a bake reads (copied files and
folders, playbook folders, imports) are regular files, folders or symlinks: a FIFO, a
device or a socket would hang a bake or feed it endless bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.errors import NotFound, Problem, RecipeError

MAX_RECIPE_BYTES = 1 << 20  # 1 MiB
MAX_LOCK_BYTES = 16 << 20  # 16 MiB
MAX_DEPTH = 32  # nested tables and arrays; tomllib itself recurses past ~400
MAX_STRING_BYTES = 64 << 10  # one string (the kernel takes one argument up to 128 KiB)
MAX_TREE_ENTRIES = 100_000  # entries in a copied or playbook folder
MAX_PROBLEMS = 50  # reported at once; the rest are counted
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # TOML integers are 64-bit

KeyPath = tuple[str | int, ...]


def kind_of(mode: int) -> str:
    """What a file type is called in messages."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def os_reason(exc: OSError) -> str:
    """An OSError in words, without the path (the caller names it)."""
    if exc.errno == errno.ELOOP:
        return "is a symlink loop (or a chain of more than 40 symlinks)"
    if exc.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    return f"cannot be read: {exc.strerror or exc}"


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (a symlink to a regular file is fine), at most ``limit``.

    The file type and size are checked before it is opened (opening a device can have
    effects of its own) and again on the opened descriptor, which is what is read.
    """
    file = str(path)
    real = os.path.realpath(path)
    through = f" (a symlink to {real})" if real != os.path.abspath(path) else ""

    def refuse(message: str) -> RecipeError:
        return RecipeError([Problem(file, None, "", message)], what=what)

    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"no {what} at {path}") from None
    except (OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "holds a NUL character"
        raise refuse(f"the path {reason}") from None
    if not stat.S_ISREG(before.st_mode):
        raise refuse(f"is {kind_of(before.st_mode)}{through}, not a regular file")
    if before.st_size > limit:
        raise refuse(f"is {before.st_size} bytes; a {what} may be at most {limit} bytes")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise refuse(f"the file {os_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise refuse("changed while it was being opened; try again")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(f"the file {os_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise refuse(f"grew past {limit} bytes while it was read; a {what} may not be larger")
    return b"".join(chunks)


def _printable(part: str | int) -> str | int:
    if isinstance(part, str) and not part.isprintable():
        return repr(part)[1:-1]
    return part


def safe_path(path: KeyPath) -> KeyPath:
    """A key path whose keys may hold NUL or control characters, escaped for messages."""
    return tuple(_printable(part) for part in path)


def value_problems(raw: dict[str, Any]) -> Iterator[tuple[KeyPath, str, bool]]:
    """(key path, message, fatal) for every string, integer and nesting out of bounds.

    Iterative, so a deep document cannot exhaust the stack here. ``fatal`` problems
    (too deep) mean the document must not be handed to the schema.
    """
    stack: list[tuple[KeyPath, object, int]] = [((), raw, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            yield path, f"nested more than {MAX_DEPTH} tables or arrays deep", True
            continue
        if isinstance(value, dict):
            items = list(value.items())
            for key, item in reversed(items):
                message = _string_problem(key, "a key")
                if message:
                    yield path, message, False
                stack.append(((*path, key), item, depth + 1))
        elif isinstance(value, list):
            for number in reversed(range(len(value))):
                stack.append(((*path, number), value[number], depth + 1))
        elif isinstance(value, str):
            message = _string_problem(value, "a string")
            if message:
                yield path, message, False
        elif isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            yield path, "an integer must fit in 64 bits (TOML's range)", False


def _string_problem(text: str, what: str) -> str | None:
    if "\0" in text:
        return f"{what} cannot hold a NUL character"
    size = len(text.encode(errors="surrogatepass"))
    if size > MAX_STRING_BYTES:
        return f"{what} may be at most {MAX_STRING_BYTES} bytes (this one is {size})"
    return None


def special_entries(top: Path) -> tuple[list[str], int]:
    """Entries under folder ``top`` that are neither regular files, folders nor symlinks
    (relative paths, at most a few), and how many entries were looked at.

    Symlinks are not followed: a bake reads them as links. The walk stops after
    :data:`MAX_TREE_ENTRIES` + 1 entries; the caller refuses a larger tree.
    """
    bad: list[str] = []
    seen = 0
    todo = [top]
    while todo and seen <= MAX_TREE_ENTRIES:
        folder = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_TREE_ENTRIES:
                    break
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    todo.append(Path(entry.path))
                elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    bad.append(f"{kind_of(mode)} '{os.path.relpath(entry.path, top)}'")
    return bad, seen


def stat_or_why(path: Path) -> os.stat_result | str:
    """The file's stat (following symlinks), or why there is none, in words."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return os_reason(exc)
    except ValueError:
        return "holds a NUL character"


def recipe_paths(target: Path) -> list[Path]:
    """A recipe file, or every *.toml directly inside a folder."""
    found_stat = stat_or_why(target)
    if not isinstance(found_stat, str) and stat.S_ISDIR(found_stat.st_mode):
        found = sorted(p for p in target.glob("*.toml") if not isinstance(stat_or_why(p), str))
        if not found:
            raise NotFound(f"no *.toml recipes in {target}")
        return found
    return [target]
