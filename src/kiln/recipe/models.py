"""The recipe schema: one pydantic model per TOML table, frozen, unknown keys refused.

The models check shape and values only; checks that need the file system (copied files
exist, paths stay inside the recipe's folder) live in :mod:`kiln.recipe.load`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# Debian package names, optionally pinned: nginx-light, libc6:amd64, nginx-light=1.22.1-9
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
OWNER_RE = r"^[a-z0-9_][a-z0-9_-]*(:[a-z0-9_][a-z0-9_-]*)?$"
UNIT_RE = re.compile(r"^[A-Za-z0-9@._:-]+$")
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Bootstrap(Model):
    """A Debian base made by mmdebstrap."""

    debian: str = Field(description="Debian suite or codename, e.g. bookworm")
    variant: Literal[
        "extract",
        "custom",
        "essential",
        "apt",
        "required",
        "minbase",
        "buildd",
        "important",
        "standard",
    ] = "minbase"
    mirror: str | None = Field(
        default=None, description="mirror URL; by default the host's apt sources are used"
    )
    components: tuple[str, ...] = ("main",)

    @field_validator("debian")
    @classmethod
    def _suite(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", value):
            raise ValueError(f"'{value}' is not a Debian suite name (e.g. bookworm)")
        return value


class ImageSection(Model):
    name: str = Field(description="image name: lower case letters, digits, '.', '_', '-'")
    description: str = ""
    parent: str | None = Field(
        default=None, description="catalog ref (name, name:version, name@sha256:...) or recipe path"
    )
    bootstrap: Bootstrap | None = None
    import_: str | None = Field(
        default=None, alias="import", description="root filesystem tarball or OCI archive"
    )
    source_date_epoch: int | None = Field(
        default=None, ge=0, description="timestamp for reproducible bakes (a lock sets one)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(NAME_RE, value):
            raise ValueError(
                f"'{value}' is not an image name: use lower case letters, digits, '.', '_' "
                "and '-', starting with a letter or digit"
            )
        return value

    @property
    def origin(self) -> Literal["parent", "bootstrap", "import", "scratch"]:
        if self.parent is not None:
            return "parent"
        if self.bootstrap is not None:
            return "bootstrap"
        if self.import_ is not None:
            return "import"
        return "scratch"


class Packages(Model):
    apt: tuple[str, ...] = ()

    @field_validator("apt")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not APT_RE.match(name)]
        if bad:
            raise ValueError(f"not a Debian package name: {', '.join(repr(b) for b in bad)}")
        return value


class RunStep(Model):
    """Run a shell command inside the build root (systemd-nspawn)."""

    run: str = Field(min_length=1)
    shell: tuple[str, ...] = ("/bin/sh", "-c")
    env: dict[str, str] = Field(default_factory=dict)


class CopyStep(Model):
    """Copy a file or a folder's contents from beside the recipe into the root."""

    source: str = Field(alias="copy", min_length=1)
    to: str
    mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3,4}$")
    owner: str | None = Field(default=None, pattern=OWNER_RE)

    @field_validator("to")
    @classmethod
    def _target(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path inside the image, e.g. /etc/motd")
        if ".." in value.split("/"):
            raise ValueError("must not contain '..': targets stay inside the root")
        return value

    @property
    def target(self) -> str:
        """The normalised target; a trailing slash means 'into this folder'."""
        norm = posixpath.normpath(self.to)
        return norm + "/" if self.to.endswith("/") and norm != "/" else norm


class AnsibleStep(Model):
    """Apply an Ansible playbook to the build root with ansible-core."""

    ansible: str = Field(min_length=1)
    extra_vars: dict[str, Any] = Field(default_factory=dict)


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        present = [k for k in ("run", "copy", "ansible") if k in value]
        return present[0] if len(present) == 1 else None
    by_type: dict[type, str] = {RunStep: "run", CopyStep: "copy", AnsibleStep: "ansible"}
    return by_type.get(type(value))


Step = Annotated[
    Annotated[RunStep, Tag("run")]
    | Annotated[CopyStep, Tag("copy")]
    | Annotated[AnsibleStep, Tag("ansible")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs exactly one of the keys run, copy or ansible",
    ),
]
STEP_KINDS = ("run", "copy", "ansible")


class Services(Model):
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()

    @field_validator("enable", "disable")
    @classmethod
    def _units(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [u for u in value if not UNIT_RE.match(u)]
        if bad:
            raise ValueError(f"not a systemd unit name: {', '.join(repr(b) for b in bad)}")
        return value


def absolute_paths(value: tuple[str, ...], what: str) -> tuple[str, ...]:
    bad = [p for p in value if not p.startswith("/") or ".." in p.split("/")]
    if bad:
        raise ValueError(f"{what} must be absolute, without '..': {bad}")
    return value


def parse_duration(value: str) -> float:
    match = DURATION_RE.match(value)
    if not match:
        raise ValueError(f"'{value}' is not a duration like 30s, 500ms or 2m")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


class ConfigKey(Model):
    required: bool = False
    default: str | None = None
    secret: bool = False
    description: str = ""


class Health(Model):
    http: str | None = Field(default=None, pattern=r"^https?://")
    command: str | None = None
    timeout: str = "30s"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _one_check(self) -> Health:
        if (self.http is None) == (self.command is None):
            raise ValueError("give exactly one of http or command")
        return self


class Runtime(Model):
    state: tuple[str, ...] = ()
    config: dict[str, ConfigKey] = Field(default_factory=dict)
    health: Health | None = None

    @field_validator("state")
    @classmethod
    def _abs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return absolute_paths(value, "state paths")

    @field_validator("config")
    @classmethod
    def _keys(cls, value: dict[str, ConfigKey]) -> dict[str, ConfigKey]:
        bad = [k for k in value if not re.fullmatch(r"[a-z][a-z0-9_]*", k)]
        if bad:
            raise ValueError(f"config keys are lower_snake_case: {bad}")
        return value


class Seal(Model):
    paths: tuple[str, ...] = Field(
        default=(), description="extra absolute globs to remove before the layer is captured"
    )

    @field_validator("paths")
    @classmethod
    def _abs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return absolute_paths(value, "seal paths")


class Tests(Model):
    commands: tuple[str, ...] = ()


class Recipe(Model):
    """One image: where it starts from, what goes in, how it runs and how it is tested."""

    image: ImageSection
    packages: Packages = Packages()
    steps: tuple[Step, ...] = ()
    services: Services = Services()
    runtime: Runtime = Runtime()
    tests: Tests = Tests()
    seal: Seal = Seal()
