"""Which policy file is in force, found without reading it (or importing its models):
``--policy PATH``, else ``KILN_POLICY``, else ``kiln.toml`` in the current folder, else
``$KILN_HOME/kiln.toml``; None when there is none.

A policy turns security checks on, so finding one fails closed: anything at one of the
two places kiln looks by itself that is not a regular file (a dangling symlink, a symlink
loop, a folder, a FIFO, a device) is an error, never "no policy". A symlink to a regular
file is fine. A path given by ``--policy`` or ``KILN_POLICY`` is checked when it is read
(kiln.lifecycle.policy.load, kiln.lifecycle.trust).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kiln.errors import BadInput, Problem, RecipeError
from kiln.home import Home
from kiln.recipe.limits import kind_of, os_reason

NAME = "kiln.toml"
MAX_POLICY_BYTES = 1 << 20  # a policy file is read whole: 1 MiB, like a recipe


def locate(home: Home, given: Path | None = None) -> Path | None:
    if given is not None:
        return given
    env = os.environ.get("KILN_POLICY")
    if env:
        return Path(env)
    try:
        here = Path.cwd()
    except OSError as exc:
        raise BadInput(
            f"cannot tell whether ./{NAME} holds a policy: the current folder {os_reason(exc)}",
            hint="run kiln from a folder that exists, or name the policy with --policy PATH",
        ) from None
    for candidate in (here / NAME, home.root / NAME):
        if os.path.lexists(candidate):  # something is there, if only a dangling symlink
            _regular(candidate)
            return candidate
    return None


def _regular(path: Path) -> None:
    """Refuse (exit 2) a policy path that is not a regular file, or a symlink to one."""
    real = os.path.realpath(path)
    through = f" (a symlink to {real})" if real != os.path.abspath(path) else ""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        reason = f"is a dangling symlink: {real} does not exist"
    except (OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "holds a NUL character"
    else:
        if stat.S_ISREG(mode):
            return
        reason = f"is {kind_of(mode)}{through}, not a regular file"
    raise RecipeError(
        [Problem(str(path), None, "", reason)],
        hint=f"kiln reads the policy at ./{NAME}, else $KILN_HOME/{NAME}: make it a regular "
        "file, or remove it to run without a policy",
        what="policy file",
    )
