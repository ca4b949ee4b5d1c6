"""`kiln`: entry point. Errors are formatted here, once, with their exit code."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import traceback
from pathlib import Path, PurePath

import click
from rich.markup import escape

from kiln import __version__
from kiln.cli.groups import LazyGroup
from kiln.cli.output import err
from kiln.errors import KilnError, disk_full, from_os_error, space_hint
from kiln.home import Home

INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): a bug in kiln, not bad input or a failure
DEBUG_ENV = "KILN_DEBUG"
_debug = {"on": False}  # set by --debug, read by main() once the command has ended

_MODULES = {  # kiln.cli.<module>: the commands its register() adds
    "build": ("bake", "diff", "export", "fsck", "gc", "images", "inspect", "lineage", "lock"),
    "machines": ("exec", "logs", "ps", "rm", "run", "start", "stop", "test"),
    "network": ("network",),
    "drift": ("drift",),
    "catalog": ("catalog",),
    "lifecycle": ("channels", "history", "promote", "restore", "revoke", "rollback", "where"),
    "signing": ("key", "sign", "verify"),
    "freshness": ("outdated",),
    "proof": ("rebuild",),
    "propagate": ("propagate", "propagate-item"),
    "refresh": ("refresh",),
    "rollout": ("rollout",),
    "update": ("update",),
    "fleet": ("group", "up"),
    "jobs": ("jobs", "worker"),
    "transfer": ("pull", "push"),
}
COMMANDS = {name: f"kiln.cli.{module}" for module, names in _MODULES.items() for name in names}


@click.group(
    cls=LazyGroup, modules=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="kiln")
@click.option(
    "--debug",
    is_flag=True,
    help=f"show the traceback of an internal error (exit code 70) instead of writing it to a "
    f"file ({DEBUG_ENV}=1 does the same)",
)
def cli(debug: bool) -> None:
    """Bake layered machine images from TOML recipes; keep them in an OCI store with a
    catalog. KILN_HOME (default /var/lib/kiln) holds the store and catalog."""
    _debug["on"] = debug


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


def _traceback_file(text: str) -> Path | None:
    """Write an internal error's traceback to a new file only its owner reads, in
    KILN_HOME/tmp if kiln can write there, else the system's temporary folder."""
    for folder in (Home.from_env().tmp, None):
        try:
            fd, name = tempfile.mkstemp(prefix="kiln-internal-error-", suffix=".txt", dir=folder)
        except OSError:
            continue
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp made it 0600
                out.write(text)
        except OSError:
            continue
        return Path(name)
    return None


def _internal(exc: Exception) -> None:
    """A bug reached the top: one line that says so and where the traceback is (or, with
    --debug, the traceback), exit code 70."""
    text = "".join(traceback.format_exception(exc))
    if _debug["on"] or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no"):
        sys.stderr.write(text)
        sys.exit(INTERNAL_ERROR)
    detail = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__
    path = _traceback_file(text)
    where = f"traceback in {path}" if path else "run it again with --debug to see the traceback"
    err.print(
        f"[bold red]internal error in kiln {__version__}:[/] {escape(what)}; {escape(where)}",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(INTERNAL_ERROR)


def main() -> None:
    os.umask(0o022)  # a belt: what kiln makes has its own modes (kiln.machines.folder)
    try:
        cli.main(standalone_mode=False)
    except KilnError as exc:
        _report(exc)
    except OSError as exc:  # a full disk, a read-only mount: not a bug, an operation that failed
        if exc.filename is None:
            exc.filename = _file_being_written(exc)
        _report(from_os_error(exc, _doing()))
    except click.exceptions.ClickException as exc:  # a usage error (2), a file click opened
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if not disk_full(str(exc)):
            _internal(exc)
        # SQLite says "database or disk is full" through SQLAlchemy
        _report(KilnError(f"{_doing()}: the catalog could not be written: disk full"))


if __name__ == "__main__":
    main()
