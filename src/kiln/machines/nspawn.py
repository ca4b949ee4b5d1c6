"""The systemd-nspawn command line that boots a machine with systemd as PID 1.

The host has no system bus, so the machine is never registered with machined
(``--keep-unit --register=no``). By default it gets a private network (loopback only);
the console goes to nspawn's output, which kiln sends to the machine's console log.
Secrets arrive as credentials read from file descriptors kiln passes to nspawn, so they
are never written to any file system.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.sandbox import Bind

ENV_TARGET = "/run/kiln/config.env"
SEED_TARGET = "/var/lib/cloud/seed/nocloud"
RECIPE_TARGET = "/run/kiln/recipe"  # the recipe's folder, for steps applied to a machine


@dataclass(frozen=True)
class Boot:
    root: Path
    name: str
    binds: tuple[Bind, ...] = ()
    credentials: Mapping[str, int] = field(default_factory=dict)  # id -> readable fd
    private_network: bool = True
    host_resolv_conf: bool = False  # steps reach the package mirror as in a bake

    def argv(self) -> list[str]:
        out = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--boot",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--hostname={self.name}",
            "--link-journal=no",
            "--timezone=off",
            "--console=read-only",
            "--kill-signal=SIGRTMIN+4",
            f"--resolv-conf={'bind-host' if self.host_resolv_conf else 'off'}",
        ]
        if self.private_network:
            out.append("--private-network")
        out += [bind.option() for bind in self.binds]
        out += [
            f"--load-credential={cid}:/proc/self/fd/{fd}" for cid, fd in self.credentials.items()
        ]
        return out


def config_binds(env_file: Path, seed: Path) -> list[Bind]:
    return [Bind(env_file, ENV_TARGET), Bind(seed, SEED_TARGET)]


def volume_binds(volumes: Mapping[str, str]) -> list[Bind]:
    return [Bind(Path(source), path, readonly=False) for path, source in sorted(volumes.items())]


def tooling_binds(venv: Path, recipe_folder: Path) -> Sequence[Bind]:
    """kiln's virtualenv at its own path (Ansible runs from it) and the recipe's folder."""
    return [Bind(venv, str(venv)), Bind(recipe_folder, RECIPE_TARGET)]
