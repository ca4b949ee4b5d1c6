"""`kiln`: entry point. Errors are formatted here, once, with their exit code."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from kiln import __version__
from kiln.cli import build, machines
from kiln.cli.output import err
from kiln.errors import KilnError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
def cli() -> None:
    """Bake layered machine images from TOML recipes; keep them in an OCI store with a
    catalog. KILN_HOME (default /var/lib/kiln) holds the store and catalog."""


build.register(cli)
machines.register(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except KilnError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"[bold]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
