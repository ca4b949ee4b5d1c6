"""`kiln`: entry point. Errors are formatted here, once, with their exit code."""

from __future__ import annotations

import io
import os
import sys
from pathlib import PurePath

import click
from rich.markup import escape

from kiln import __version__
from kiln.cli import (
    build,
    catalog,
    drift,
    freshness,
    lifecycle,
    machines,
    proof,
    propagate,
    refresh,
    signing,
)
from kiln.cli.output import err
from kiln.errors import KilnError, disk_full, from_os_error, space_hint


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
def cli() -> None:
    """Bake layered machine images from TOML recipes; keep them in an OCI store with a
    catalog. KILN_HOME (default /var/lib/kiln) holds the store and catalog."""


build.register(cli)
machines.register(cli)
drift.register(cli)
catalog.register(cli)
lifecycle.register(cli)
signing.register(cli)
freshness.register(cli)
proof.register(cli)
propagate.register(cli)
refresh.register(cli)


def _report(exc: KilnError) -> None:
    hint = exc.hint
    if disk_full(exc.message) and not (hint and "free space" in hint):
        hint = space_hint()
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[bold]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
    sys.exit(exc.exit_code)


def _doing() -> str:
    """The command being run, for errors that do not say it themselves."""
    words = [arg for arg in sys.argv[1:] if not arg.startswith("-")][:1]
    return " ".join(["kiln", *words])


def _file_being_written(exc: BaseException) -> str | None:
    """The file an OSError without a file name was about. A write or a flush reports no
    path, but the innermost kiln frame holds it: an open file, or a path among its locals
    (or their attributes: a blob writer's temp file)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}kiln{os.sep}" in tb.tb_frame.f_code.co_filename:
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return None
    found: list[str] = []
    for value in frames[-1].f_locals.values():
        for item in [value, *getattr(value, "__dict__", {}).values()]:
            name = getattr(item, "name", None)
            if isinstance(item, io.IOBase) and isinstance(name, str):
                return name
            if isinstance(item, PurePath):
                found.append(str(item))
    return found[0] if len(found) == 1 else None


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except KilnError as exc:
        _report(exc)
    except OSError as exc:  # a full disk, a read-only mount: not a bug, an operation that failed
        if exc.filename is None:
            exc.filename = _file_being_written(exc)
        _report(from_os_error(exc, _doing()))
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if not disk_full(str(exc)):
            raise
        # SQLite says "database or disk is full" through SQLAlchemy
        _report(KilnError(f"{_doing()}: the catalog could not be written: disk full"))


if __name__ == "__main__":
    main()
