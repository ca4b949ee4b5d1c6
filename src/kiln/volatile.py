"""Volatile paths: what differs between two runs of the same recipe, or two machines.

Machine identity (machine-id, ssh host keys, random seed, host name) and the leftovers of
running things (logs, apt lists and caches, dpkg's -old files, temp files). A bake's seal
removes them before a layer is captured (kiln.bake.seal); a convergence check and a drift
check ignore them on a machine.
"""

from __future__ import annotations

from dataclasses import dataclass


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
