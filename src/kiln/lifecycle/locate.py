"""Which policy file is in force, found without reading it (or importing its models):
``--policy PATH``, else ``KILN_POLICY``, else ``kiln.toml`` in the current folder, else
``$KILN_HOME/kiln.toml``; None when there is none."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.home import Home

NAME = "kiln.toml"
MAX_POLICY_BYTES = 1 << 20  # a policy file is read whole: 1 MiB, like a recipe


def locate(home: Home, given: Path | None = None) -> Path | None:
    if given is not None:
        return given
    env = os.environ.get("KILN_POLICY")
    if env:
        return Path(env)
    for candidate in (Path.cwd() / NAME, home.root / NAME):
        if candidate.is_file():
            return candidate
    return None
