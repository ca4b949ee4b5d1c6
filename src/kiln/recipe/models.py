"""The recipe schema: one pydantic model per TOML table, frozen, unknown keys refused.

The models check shape and values only; checks that need the file system (copied files
exist, paths stay inside the recipe's folder) live in :mod:`kiln.recipe.load`. A step's
options are its kind's model (:mod:`kiln.steps`); ``Step`` is the union of the registry's.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)

from kiln import durations, refs, steps
from kiln.schema import CONTROL_RE, MAX_NAME, Model, api_filesystem, path_bounds
from kiln.steps.kind import Kind, StepModel

# Debian package names, optionally pinned: nginx-light, libc6:amd64, nginx-light=1.22.1-9
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
UNIT_RE = re.compile(r"^[A-Za-z0-9@._:-]+$")
COMPONENT_RE = r"^[a-z0-9][a-z0-9/._-]{0,63}$"
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z, the last second a timestamp can name
MAX_TIMEOUT = 86400.0  # a day


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
    components: tuple[Annotated[str, Field(pattern=COMPONENT_RE)], ...] = Field(
        default=("main",), min_length=1
    )

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value is not None and (not value or re.search(r"\s", value) or CONTROL_RE.search(value)):
            raise ValueError("a mirror is one URL without spaces or control characters")
        return value

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
    source_date_epoch: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_EPOCH,
        description="timestamp for reproducible bakes (a lock sets one)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > refs.MAX_NAME or not re.fullmatch(refs.NAME, value):
            raise ValueError(f"'{value[:80]}' is not an image name: use {refs.NAME_RULE}")
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
        bad = [name for name in value if len(name) > MAX_NAME or not APT_RE.match(name)]
        if bad:
            raise ValueError(f"not a Debian package name: {', '.join(repr(b) for b in bad)}")
        return value


def step_union(kinds: Sequence[Kind[Any]]) -> Any:
    """The ``Step`` type: one tagged member per registered kind, told apart by which of
    the kinds' keys a table holds (exactly one)."""
    names = [kind.name for kind in kinds]
    by_type = {kind.model: kind.name for kind in kinds}

    def kind_key(value: Any) -> str | None:
        if isinstance(value, dict):
            present = [name for name in names if name in value]
            return present[0] if len(present) == 1 else None
        return by_type.get(type(value))

    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    members = tuple(Annotated[kind.model, Tag(kind.name)] for kind in kinds)
    return Annotated[
        Union[members],  # noqa: UP007 (a union built from a tuple)
        Discriminator(
            kind_key,
            custom_error_type="step_kind",
            custom_error_message=f"a step needs exactly one of the keys {listed}",
        ),
    ]


if TYPE_CHECKING:
    Step: TypeAlias = StepModel
else:
    Step = step_union(steps.kinds())
STEP_KINDS = steps.names()


class Services(Model):
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()

    @field_validator("enable", "disable", "mask")
    @classmethod
    def _units(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [u for u in value if len(u) > MAX_NAME or not UNIT_RE.match(u)]
        if bad:
            raise ValueError(f"not a systemd unit name: {', '.join(repr(b) for b in bad)}")
        return value


def absolute_paths(value: tuple[str, ...], what: str) -> tuple[str, ...]:
    for path in value:
        path_bounds(path)
    bad = [p for p in value if not p.startswith("/") or ".." in p.split("/")]
    if bad:
        raise ValueError(f"{what} must be absolute, without '..': {bad}")
    return value


def state_paths(value: tuple[str, ...]) -> tuple[str, ...]:
    """Volumes: real, distinct sub-paths of the image, outside the API file systems."""
    absolute_paths(value, "state paths")
    for path in value:
        norm = posixpath.normpath(path)
        if norm in ("/", "//"):
            raise ValueError("'/' cannot be a state path: name the folder that holds the data")
        if path != norm:
            raise ValueError(f"{path!r} is not a plain path: write it as {norm!r}")
        api = api_filesystem(norm)
        if api is not None:
            raise ValueError(
                f"{path!r} is under {api}, which a machine mounts for itself; "
                "keep data elsewhere, e.g. /var/lib/NAME"
            )
    for path in value:
        for other in value:
            if other != path and other.startswith(path + "/"):
                raise ValueError(f"state paths {path!r} and {other!r} overlap: keep one")
    if len(set(value)) != len(value):
        raise ValueError("a state path is listed twice")
    return value


class ConfigKey(Model):
    required: StrictBool = False
    default: str | None = None
    secret: StrictBool = False
    description: str = ""

    @model_validator(mode="after")
    def _default(self) -> ConfigKey:
        if (
            self.default is not None
            and not self.secret
            and ("\n" in self.default or "\r" in self.default)
        ):
            raise ValueError("the default of a plain key is one line (secrets may span lines)")
        if self.required and self.default == "":
            raise ValueError("a required key cannot default to an empty value")
        return self


class Health(Model):
    http: str | None = Field(default=None, pattern=r"^https?://")
    command: str | None = None
    timeout: str = "30s"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        durations.span(value, MAX_TIMEOUT, bare=True)  # a bare number is seconds
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
    def _state(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return state_paths(value)

    @field_validator("config")
    @classmethod
    def _keys(cls, value: dict[str, ConfigKey]) -> dict[str, ConfigKey]:
        bad = [k for k in value if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", k)]
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
