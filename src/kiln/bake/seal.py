"""Sealing: remove machine-specific and volatile data before a layer is captured.

An image must not carry one machine's identity (machine-id, ssh host keys, random seed)
or the leftovers of its build (logs, apt lists and caches, dpkg's -old files, temp
files). Each rule removes what it matches, then the seal checks that nothing matches any
more; the checks are recorded in the image's labels and shown by ``kiln inspect``.
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln.bake.context import BuildContext
from kiln.errors import KilnError

VERSION = 1


@dataclass(frozen=True)
class Rule:
    pattern: str  # an absolute glob inside the image; ** matches any depth
    why: str
    files_only: bool = False  # keep matching folders (e.g. /var/log/nginx), remove files


RULES = (
    Rule("/var/lib/dbus/machine-id", "machine identity"),
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


def _matches(root: Path, rule: Rule) -> list[Path]:
    found = []
    for match in glob.glob(str(root) + rule.pattern, recursive=True, include_hidden=True):
        if not os.path.lexists(match):
            continue  # Python 3.11's glob yields "dir/" for "dir/**" when dir is missing
        path = Path(match)
        if rule.files_only and path.is_dir() and not path.is_symlink():
            continue
        found.append(path)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def rules(context: BuildContext) -> list[Rule]:
    extra = [
        Rule(p, "declared in the recipe's [seal] paths") for p in context.recipe.recipe.seal.paths
    ]
    return [*RULES, *extra]


def seal(context: BuildContext) -> list[dict[str, object]]:
    """Apply every rule, then assert it; return the checks for the image's labels."""
    root = context.root
    checks: list[dict[str, object]] = []
    for rule in rules(context):
        removed = _matches(root, rule)
        for path in sorted(removed, reverse=True):  # children before parents
            _remove(path)
        left = _matches(root, rule)
        checks.append(
            {"path": rule.pattern, "why": rule.why, "removed": len(removed), "ok": not left}
        )
        if left:
            raise KilnError(
                f"seal failed: {[str(p) for p in left]} still present",
                hint=f"rule {rule.pattern} ({rule.why})",
            )
    machine_id = root / "etc/machine-id"
    if machine_id.is_file() and not machine_id.is_symlink():
        if machine_id.stat().st_size:
            machine_id.write_bytes(b"")  # empty: each machine gets its own at first boot
        checks.append(
            {
                "path": "/etc/machine-id",
                "why": "machine identity, emptied",
                "removed": 0,
                "ok": machine_id.stat().st_size == 0,
            }
        )
    return checks
