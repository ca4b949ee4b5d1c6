"""Command groups that answer a mistyped command with the nearest one (kiln.suggest), and
kiln's own group, which imports a command's module only when that command is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any

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


class LazyGroup(Group):
    """A group whose commands are registered by modules (``register(group)``), each
    imported the first time one of its commands is looked up: kiln run does not import
    what kiln bake needs, which was a third of its start-up. ``modules``: command name ->
    the module that registers it; kiln --help imports them all."""

    def __init__(self, *args: Any, modules: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modules = dict(modules)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.modules})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.modules.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(module).register(self)
        return self.commands.get(cmd_name)

    def load_all(self) -> MutableMapping[str, click.Command]:
        """Every command, each module imported (for help texts and the docs' checks)."""
        for name in self.modules:
            self.get_command(click.Context(self), name)
        return self.commands
