"""[services]: enable, disable and mask systemd units in the root (no running systemd needed)."""

from __future__ import annotations

from kiln.bake.context import BuildContext
from kiln.errors import BadInput
from kiln.rootpath import Root

VERSION = 1


def apply(context: BuildContext) -> None:
    services = context.recipe.recipe.services
    if not (services.enable or services.disable or services.mask):
        return
    with Root(context.root) as root:
        has_systemctl = root.exists("/usr/bin/systemctl", follow=True)
    if not has_systemctl:
        raise BadInput(
            "[services] needs systemd in the image",
            hint="add systemd to [packages] apt, or to the parent image",
        )
    if services.enable:
        context.sandbox.run(["systemctl", "enable", *services.enable])
    if services.disable:
        context.sandbox.run(["systemctl", "disable", *services.disable])
    if services.mask:
        context.sandbox.run(["systemctl", "mask", *services.mask])
