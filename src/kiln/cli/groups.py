"""Command groups that answer a mistyped command with the nearest one (kiln.suggest)."""

from __future__ import annotations

import click

from kiln.suggest import did_you_mean


class Group(click.Group):
    """A click group whose 'no such command' says "did you mean ...?" as kiln does for
    names and channels."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if (
            name
            and not name.startswith("-")
            and not ctx.resilient_parsing
            and self.get_command(ctx, name) is None
        ):
            known = self.list_commands(ctx)
            ctx.fail(f"no such command '{name}'{did_you_mean(name, known)}")
        return super().resolve_command(ctx, args)
