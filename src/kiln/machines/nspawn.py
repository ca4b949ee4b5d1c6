"""What a machine's nspawn gets bound in: config, NoCloud seed, volumes, tooling.

The command line itself is kiln.sandbox.Boot, beside the one for build steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln.sandbox import Bind
from kiln.steps.target import RECIPE_TARGET

ENV_TARGET = "/run/kiln/config.env"
SEED_TARGET = "/var/lib/cloud/seed/nocloud"
HOSTS_TARGET = "/etc/hosts"  # a network member's hosts file (kiln.machines.netns)


def config_binds(env_file: Path, seed: Path) -> list[Bind]:
    return [Bind(env_file, ENV_TARGET), Bind(seed, SEED_TARGET)]


def volume_binds(volumes: Mapping[str, str]) -> list[Bind]:
    return [Bind(Path(source), path, readonly=False) for path, source in sorted(volumes.items())]


def tooling_binds(venv: Path, recipe_folder: Path) -> Sequence[Bind]:
    """kiln's virtualenv at its own path (Ansible runs from it) and the recipe's folder."""
    return [Bind(venv, str(venv)), Bind(recipe_folder, RECIPE_TARGET)]
