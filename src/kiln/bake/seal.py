"""Sealing: remove machine-specific and volatile data before a layer is captured.

An image must not carry one machine's identity (machine-id, ssh host keys, random seed,
the host name a vendor's build machine left in /etc/hostname) or the leftovers of its
build (logs, apt lists and caches, dpkg's -old files, temp files). Each rule removes what
it matches, then the seal checks that nothing matches any more; the checks are recorded
in the image's labels and shown by ``kiln inspect``.

Sockets a step left in the new layer go too (:func:`drop_sockets`), unrecorded: tar never
puts one in a blob, so the unpacked layer would otherwise hold what no other store's does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kiln.bake.context import BuildContext
from kiln.errors import KilnError
from kiln.rootpath import Root
from kiln.volatile import RULES, Rule

VERSION = 2  # 2: /etc/hostname


def _matches(root: Root, rule: Rule) -> list[str]:
    found = []
    for path in root.glob(rule.pattern):
        if rule.files_only and root.is_dir(path):
            continue
        found.append(path)
    return found


def rules(context: BuildContext) -> list[Rule]:
    extra = [
        Rule(p, "declared in the recipe's [seal] paths") for p in context.recipe.recipe.seal.paths
    ]
    return [*RULES, *extra]


def seal(context: BuildContext) -> list[dict[str, object]]:
    """Apply every rule, then assert it; return the checks for the image's labels.

    Rules match and remove inside the root (kiln.rootpath): a symlink in the image never
    leads a rule to the host's files.
    """
    with Root(context.root) as root:
        return _seal(root, rules(context))


def drop_sockets(tree: Path) -> int:
    """Remove every socket below ``tree`` (a layer about to be captured), inside it
    (kiln.rootpath: never through a symlink); return how many."""
    removed = 0
    with Root(tree) as root:
        for _folder, fd, entries in root.walk():
            for name, found in entries.items():
                if stat.S_ISSOCK(found.st_mode):
                    os.unlink(name, dir_fd=fd)
                    removed += 1
    return removed


def _seal(root: Root, rules: list[Rule]) -> list[dict[str, object]]:
    checks: list[dict[str, object]] = []
    for rule in rules:
        removed = _matches(root, rule)
        for path in sorted(removed, reverse=True):  # children before parents
            root.remove(path)
        left = _matches(root, rule)
        checks.append(
            {"path": rule.pattern, "why": rule.why, "removed": len(removed), "ok": not left}
        )
        if left:
            raise KilnError(
                f"seal failed: {left} still present",
                hint=f"rule {rule.pattern} ({rule.why})",
            )
    machine_id = "/etc/machine-id"
    if root.exists(machine_id) and stat.S_ISREG(root.lstat(machine_id).st_mode):
        fd = root.open_file(machine_id, os.O_WRONLY | os.O_TRUNC, follow=False)
        try:  # emptied: each machine gets its own at first boot
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        checks.append(
            {
                "path": "/etc/machine-id",
                "why": "machine identity, emptied",
                "removed": 0,
                "ok": size == 0,
            }
        )
    return checks
