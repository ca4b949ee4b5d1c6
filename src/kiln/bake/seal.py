"""Sealing: remove machine-specific and volatile data before a layer is captured.

An image must not carry one machine's identity (machine-id, ssh host keys, random seed,
the host name a vendor's build machine left in /etc/hostname) or the leftovers of its
build (logs, apt lists and caches, dpkg's -old files, temp files). Each rule removes what
it matches, then the seal checks that nothing matches any more; the checks are recorded
in the image's labels and shown by ``kiln inspect``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from kiln.bake.context import BuildContext
from kiln.errors import KilnError
from kiln.rootpath import Root

VERSION = 2  # 2: /etc/hostname


@dataclass(frozen=True)
class Rule:
    pattern: str  # an absolute glob inside the image; ** matches any depth
    why: str
    files_only: bool = False  # keep matching folders (e.g. /var/log/nginx), remove files


RULES = (
    Rule("/var/lib/dbus/machine-id", "machine identity"),
    # systemd keeps the host name nspawn gives (the machine's name) when /etc/hostname is
    # missing or holds no name; a Debian bootstrap has none, an imported root often does.
    Rule("/etc/hostname", "host name: a machine's host name is its name"),
    Rule("/etc/ssh/ssh_host_*", "ssh host keys: each machine makes its own"),
    Rule("/var/lib/systemd/random-seed", "machine's random seed"),
    Rule("/var/log/**", "build logs", files_only=True),
    Rule("/var/lib/apt/lists/*", "apt lists: stale the day after the bake", files_only=True),
    Rule("/var/lib/apt/lists/partial/*", "apt lists", files_only=True),
    Rule("/var/cache/apt/*.bin", "apt caches"),
    Rule("/var/cache/apt/archives/*.deb", "downloaded packages"),
    Rule("/var/cache/apt/archives/partial/*", "downloaded packages"),
    Rule("/var/cache/ldconfig/aux-cache", "ldconfig's cache of file times"),
    Rule("/var/cache/debconf/*-old", "debconf backups"),
    Rule("/var/lib/dpkg/*-old", "dpkg backups"),
    Rule("/tmp/*", "temporary files"),
    Rule("/var/tmp/*", "temporary files"),
    Rule("/root/.ansible", "Ansible's controller state"),
)


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
