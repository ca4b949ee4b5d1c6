"""Rendering shared by the commands: JSON to stdout, people-facing text via rich.

stdout into a pipe or a file is line-buffered, as on a terminal, so every line is there
to read (``tail -f``) as soon as it is written; progress (:func:`progress`) is a spinner
on a terminal's stderr and one line per message anywhere else.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape


def _line_buffered() -> None:
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering and not stream.isatty():
        stream.reconfigure(line_buffering=True)


_line_buffered()
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
# Tables (kiln ps, kiln images) at a terminal's width, but never cut to rich's default of
# 80 columns when stdout is a pipe or a file: a CI log or grep gets whole rows. COLUMNS,
# when set, still wins.
PIPE_WIDTH = 1000


class _Wide:
    """Prints tables as wide as the terminal, or :data:`PIPE_WIDTH` where stdout is none:
    asked at each print, not once at import (a test runner or a server swaps stdout)."""

    def print(self, *objects: Any, **options: Any) -> None:
        if sys.stdout.isatty() or os.environ.get("COLUMNS"):
            console.print(*objects, **options)
        else:
            Console(soft_wrap=True, width=PIPE_WIDTH).print(*objects, **options)


wide = _Wide()

F = TypeVar("F", bound=Callable[..., Any])
json_flag = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")


def policy_option(what: str = "") -> Callable[[F], F]:
    """``--policy FILE``: the policy file a command applies (``what``: which part of it)."""
    return click.option(
        "--policy",
        "policy_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"the policy file{' ' + what if what else ''} (default: KILN_POLICY, "
        "./kiln.toml, $KILN_HOME/kiln.toml)",
    )


@contextmanager
def progress(
    label: str, verbose: bool = False, *, label_lines: bool = True
) -> Iterator[Callable[[str], None]]:
    """A command's progress as it goes: on a terminal a spinner on stderr showing the
    latest message; into a pipe or a file, one line per message, each flushed as it is
    written (a spinner there would show nothing), leaving out the ones that only say a
    stage has begun (ending in ``ONGOING``: its line with its time follows). A message of
    several lines is printed whole on a terminal too. With ``verbose``, the output of
    echoed commands (apt, ansible, a step's shell) as well. ``label_lines`` starts each
    plain line with ``LABEL: `` (a bake's messages name their recipe themselves)."""
    from kiln import proc
    from kiln.app.bake import ONGOING

    def line(text: str) -> None:
        err.print(escape(text), highlight=False)

    with proc.echo_to(line if verbose else None):
        if not err.is_terminal:

            def plain(message: str) -> None:
                if not message.endswith(ONGOING):
                    line(f"{label}: {message}" if label_lines else message)

            yield plain
            return
        with err.status(escape(label), spinner="dots") as status:

            def spin(message: str) -> None:
                status.update(escape(f"{label}: {message}"))
                if "\n" in message:
                    line(message)

            yield spin


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
