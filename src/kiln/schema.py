"""What every model of a recipe shares: the base config and the bounds on values.

Recipe tables (:mod:`kiln.recipe.models`) and step options (:mod:`kiln.steps`) are both
frozen pydantic models that refuse unknown keys; the limits here are the kernel's and the
command line's, so a recipe that loads never fails for them at bake time.
"""

from __future__ import annotations

import posixpath
import re

from pydantic import BaseModel, ConfigDict

OWNER_RE = r"^[a-z0-9_][a-z0-9_-]*(:[a-z0-9_][a-z0-9_-]*)?$"
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 255  # a package or unit name, a file name component
MAX_PATH = 4095  # a path inside the image (PATH_MAX less its NUL)
MAX_EXTRA_VARS = 100_000  # bytes of JSON, passed to ansible-playbook as one argument
# Where a machine's kernel and init (and kiln, under /run/kiln) mount file systems of their
# own: what an image holds there is hidden when it runs, so it is no place for data.
API_FILESYSTEMS = ("/proc", "/sys", "/dev", "/run")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def path_bounds(path: str) -> None:
    """A path inside the image: no control characters, within the kernel's lengths."""
    if CONTROL_RE.search(path):
        raise ValueError(f"{path!r}: a path holds no control characters")
    if len(path.encode()) > MAX_PATH:
        raise ValueError(f"a path is at most {MAX_PATH} bytes")
    if any(len(part.encode()) > MAX_NAME for part in path.split("/")):
        raise ValueError(f"each name in a path is at most {MAX_NAME} bytes")


def api_filesystem(path: str) -> str | None:
    """The API file system (:data:`API_FILESYSTEMS`) an absolute path is in, if any."""
    norm = "/" + posixpath.normpath(path).lstrip("/")
    return next((api for api in API_FILESYSTEMS if norm == api or norm.startswith(api + "/")), None)
