"""The policy file: what a promotion needs per channel, which keys kiln trusts, what gc keeps.

```toml
# kiln.toml, beside the recipes
[trust]
keys = ["keys/release.pub"]     # trusted public keys (PEM), relative to this file
require_signatures = false      # kiln run refuses an image without a valid signature

[channels]
open = false                    # a promotion into a channel not defined here is refused

[channels.dev]                  # no gates: any version may enter dev

[channels.staging]
tests = true                    # a passed `kiln test` of this exact digest
after = "dev"                   # it was in channel dev first ...
soak = "1h"                     # ... for at least this long

[channels.prod]
tests = true
converge = true                 # that test run also converged
signed = true                   # a valid signature by a trusted key
after = "staging"
soak = "24h"
max_security_age = "7d"         # no security update kiln first saw over 7 days ago pending
proven_within = "30d"           # a passed kiln rebuild --prove no older than 30 days

[freshness]
index_max_age = "1h"            # kiln outdated fetches a cached Packages index again after this

[registry]                      # the team's registry (docs/sharing.md)
url = "docker://registry.example:5000/kiln"   # image NAME lives at kiln/NAME

[schedule]                      # periodic jobs on a shared catalog's workers (kiln worker)
refresh = "daily"               # hourly, daily, weekly or five cron fields
prove = "weekly"

[retention]                     # kiln gc; flags override
keep_last = 5
keep_younger_than = "30d"
keep_channel_history = "14d"
```

It is validated like a recipe (every problem at once, with file:line and key path; exit 2),
and strictly: a value of the wrong type (``keep_last = "5"``, ``tests = "true"``) is an
error, never converted. ``after`` names another channel the file defines, and the chain
of ``after`` has no cycle. A promotion into a channel the file does not define is refused
(with the nearest defined name) unless it says ``[channels] open = true``.

Which file: ``--policy PATH``, else ``KILN_POLICY``, else ``kiln.toml`` in the current
folder, else ``$KILN_HOME/kiln.toml`` (anything there that is not a regular file is an
error: kiln.lifecycle.policyfile); without one there are no gates, no trust policy, every
channel name is open and gc keeps what its flags say. Commands that apply a policy say
which file they used.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from kiln import refs
from kiln.durations import seconds
from kiln.errors import BadInput, NotFound, Problem, RecipeError
from kiln.home import Home
from kiln.lifecycle.fleetpolicy import GroupSpec, NetworkPolicy, check_groups
from kiln.lifecycle.policyfile import MAX_POLICY_BYTES, NAME, locate
from kiln.recipe import limits
from kiln.recipe.keylines import KeyPath, LineIndex, format_path
from kiln.recipe.load import parse_toml, pydantic_problems
from kiln.schema import Model
from kiln.suggest import did_you_mean

DOCS = "docs/lifecycle.md"


class Strict(Model):
    """A table of the policy file: a value of the wrong type is an error, never converted
    (``"5"`` is not 5, ``"yes"`` is not true)."""

    model_config = ConfigDict(strict=True)


def _duration(value: str | None) -> str | None:
    if value is not None:
        seconds(value)
    return value


class Gates(Strict):
    """What a promotion into one channel needs."""

    tests: bool = False
    converge: bool = False
    signed: bool = False
    after: str | None = None
    soak: str | None = None
    max_security_age: str | None = None  # no security update pending longer than this
    proven_within: str | None = None  # a passed rebuild proof no older than this

    @field_validator("after")
    @classmethod
    def _after(cls, value: str | None) -> str | None:
        why = refs.channel_problem(value) if value is not None else None
        if why is not None:
            raise ValueError(f"'{value}' is not a channel name: {why}")
        return value

    @field_validator("soak", "max_security_age", "proven_within")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return _duration(value)

    @property
    def soak_seconds(self) -> int:
        return seconds(self.soak) if self.soak else 0


class Trust(Strict):
    keys: tuple[str, ...] = Field((), strict=False)  # a TOML array; each item a string
    require_signatures: bool = False


class Retention(Strict):
    keep_last: int | None = Field(default=None, ge=0, le=1_000_000)
    keep_younger_than: str | None = None
    keep_channel_history: str | None = None

    @field_validator("keep_younger_than", "keep_channel_history")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return _duration(value)


class Freshness(Strict):
    """How old a cached Packages index may be before kiln outdated fetches it again."""

    index_max_age: str = "1h"

    @field_validator("index_max_age")
    @classmethod
    def _age(cls, value: str) -> str:
        seconds(value)
        return value

    @property
    def index_max_age_seconds(self) -> int:
        return seconds(self.index_max_age)


class Registry(Strict):
    """``[registry]``: the team's registry, where kiln pulls an image whose bytes are in
    another store, and where ``kiln push`` sends images by default."""

    url: str | None = None  # docker://HOST[:PORT]/PREFIX: an image NAME lives at PREFIX/NAME
    insecure: bool = False  # plain HTTP: allowed for a loopback host only

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            why = registry_url_problem(value)
            if why is not None:
                raise ValueError(f"'{value}' is not a registry url: {why}")
        return value


def registry_url_problem(value: str) -> str | None:
    """Why ``value`` is not ``docker://HOST[:PORT][/PREFIX]`` without a tag, or None."""
    if not value.startswith("docker://"):
        return "it starts with docker:// (docker://HOST[:PORT]/PREFIX)"
    rest = value.removeprefix("docker://").rstrip("/")
    host, _, prefix = rest.partition("/")
    if not host or any(c in host for c in "@ "):
        return "it names a registry host after docker://"
    if "@" in prefix or ":" in prefix:
        return "it names a place (HOST/PREFIX), not an image: no tag or digest"
    return None


SCHEDULES = {"hourly": "0 * * * *", "daily": "0 3 * * *", "weekly": "0 4 * * 1"}


class Schedule(Strict):
    """``[schedule]``: periodic jobs the workers of a shared catalog run (kiln worker),
    each ``hourly``, ``daily``, ``weekly`` or a cron expression (five fields)."""

    refresh: str | None = None  # kiln refresh of every image with pending security updates
    prove: str | None = None  # kiln rebuild --prove of what the channels point at

    @field_validator("refresh", "prove")
    @classmethod
    def _when(cls, value: str | None) -> str | None:
        if value is not None and cron(value) is None:
            raise ValueError(
                f"'{value}' is not a schedule: hourly, daily, weekly or five cron fields "
                "(minute hour day month weekday)"
            )
        return value


def cron(value: str) -> str | None:
    """The cron expression a schedule value stands for, or None if it is not one."""
    expression = SCHEDULES.get(value, value)
    fields = expression.split()
    allowed = set("0123456789*/,-")
    if len(fields) != 5 or any(not f or not set(f) <= allowed for f in fields):
        return None
    return expression


class Channels(Strict):
    """``[channels]``: one table of gates per channel, and ``open``, whether a promotion
    may enter a channel the file does not define (with no gates)."""

    model_config = ConfigDict(extra="allow")
    open: bool = False
    __pydantic_extra__: dict[str, Gates] = Field(init=False)

    @field_validator("open", mode="before")
    @classmethod
    def _open(cls, value: object) -> object:
        if isinstance(value, dict):
            raise ValueError(
                "open is not a channel name here: [channels] open = true or false says "
                "whether a promotion may enter a channel this file does not define"
            )
        return value

    @property
    def defined(self) -> dict[str, Gates]:
        """The channels the file defines, in its order."""
        return self.__pydantic_extra__ or {}


class PolicyModel(Strict):
    trust: Trust = Trust()
    channels: Channels = Channels()
    retention: Retention = Retention()
    freshness: Freshness = Freshness()
    network: NetworkPolicy = NetworkPolicy()
    groups: dict[str, GroupSpec] = Field(default_factory=dict)
    registry: Registry = Registry()
    schedule: Schedule = Schedule()

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: dict[str, GroupSpec]) -> dict[str, GroupSpec]:
        return check_groups(value)


@dataclass(frozen=True)
class Policy:
    """A loaded policy, or the empty one (``path`` None)."""

    model: PolicyModel
    path: Path | None = None
    digest: str = ""  # sha256 of the file's bytes

    def gates(self, channel: str) -> Gates:
        """What a promotion into ``channel`` needs. A channel the policy file does not
        define is refused (BadInput, exit 2) unless it says ``[channels] open = true``;
        without a policy file every channel is open and has no gates."""
        defined = self.model.channels.defined
        if channel in defined:
            return defined[channel]
        if self.path is None or self.model.channels.open:
            return Gates()
        known = ", ".join(defined) or "none"
        raise BadInput(
            f"{channel} is not a channel the policy {self.path} defines"
            + did_you_mean(channel, defined),
            hint=f"its channels: {known}; add [channels.{channel}] to it, or set [channels] "
            "open = true there to let promotions enter channels it does not define",
        )

    @property
    def trust(self) -> Trust:
        return self.model.trust

    @property
    def retention(self) -> Retention:
        return self.model.retention

    @property
    def freshness(self) -> Freshness:
        return self.model.freshness

    @property
    def network(self) -> NetworkPolicy:
        return self.model.network

    @property
    def registry(self) -> Registry:
        return self.model.registry

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    @property
    def groups(self) -> dict[str, GroupSpec]:
        return self.model.groups

    def group(self, name: str) -> GroupSpec:
        """The group ``name`` declares (BadInput naming the nearest one otherwise)."""
        if name in self.model.groups:
            return self.model.groups[name]
        where = f"the policy {self.path}" if self.path else "no policy file (kiln.toml)"
        raise BadInput(
            f"no group named {name} in {where}" + did_you_mean(name, self.model.groups),
            hint="declare it as [groups.NAME] with image and count (docs/fleet.md)",
        )

    def key_paths(self) -> list[Path]:
        """The trusted keys' files, relative to the policy file's folder."""
        folder = self.path.parent if self.path else Path.cwd()
        return [folder / key for key in self.model.trust.keys]

    def describe(self) -> dict[str, str | None]:
        return {"path": str(self.path) if self.path else None, "digest": self.digest or None}


class Lines(LineIndex):
    """The recipe loader's line index, and for a key path with no line of its own or of an
    ancestor (``[chanels.prod]`` has no ``[chanels]`` line) the first line beneath it."""

    def line_of(self, path: Sequence[str | int]) -> int | None:
        found = super().line_of(path)
        if found is not None or not path:
            return found
        key = tuple(path)
        below = [line for at, line in self.lines.items() if at[: len(key)] == key]
        return min(below, default=None)


def pipeline_problems(raw: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """What the schema cannot check: channel names, and ``after`` naming another channel
    the file defines, with no cycle. It reads the parsed TOML defensively (the schema
    reports values of the wrong shape), so its problems come with the schema's."""
    tables = raw.get("channels")
    if not isinstance(tables, dict):
        return []
    defined = {name: gates for name, gates in tables.items() if isinstance(gates, dict)}
    defined.pop("open", None)  # [channels] open, not a channel (the schema says so)

    def after_of(name: str) -> str | None:
        after = defined[name].get("after")
        return after if isinstance(after, str) and refs.is_channel(after) else None

    out: list[tuple[KeyPath, str]] = []
    for name in defined:
        why = refs.channel_problem(name)
        if why is not None:
            out.append((("channels", name), f"'{name}' is not a channel name: {why}"))
        after = after_of(name)
        where: KeyPath = ("channels", name, "after")
        if after == name:
            out.append((where, f"after = '{after}' names its own channel: name the one before it"))
        elif after is not None and after not in defined:
            out.append(
                (
                    where,
                    f"after = '{after}' names a channel this file does not define"
                    f"{did_you_mean(after, defined)}: add [channels.{after}] (an empty table "
                    "is a channel with no gates)",
                )
            )
    reported: set[str] = set()
    for start in defined:
        chain = [start]
        while (after := after_of(chain[-1])) in defined and after not in chain:
            chain.append(after)
        if after != start or len(chain) < 2 or reported & set(chain):
            continue
        reported.update(chain)
        out.append(
            (
                ("channels", start, "after"),
                "after makes a cycle: " + " -> ".join([*chain, start]) + " (each channel "
                "comes after one before it, and the first after none)",
            )
        )
    return out


def _parse_problem(found: Problem, data: bytes) -> Problem:
    """The TOML parser's problem, told of a policy file, with a line where the parser gave
    none: the last line for an unfinished document, the line of an integer too long to read
    or of the bracket that nests too deep."""
    found = replace(found, message=found.message.replace("a recipe?", "a policy file?"))
    if found.line is not None:
        return found
    if "end of document" in found.message:
        return replace(found, line=data.count(b"\n") + (not data.endswith(b"\n")))
    digits = re.search(rb"[0-9][0-9_]{4000,}", data) if "integer" in found.message else None
    if digits is not None:
        return replace(found, line=data.count(b"\n", 0, digits.start()) + 1)
    if "nested too deeply" in found.message:  # where the brackets first open too deep
        depth = 0
        for at, byte in enumerate(data):
            depth += (byte in b"[{") - (byte in b"]}")
            if depth > limits.MAX_DEPTH:
                return replace(found, line=data.count(b"\n", 0, at) + 1)
    return found


def load(path: Path) -> Policy:
    """Load and validate a policy file; RecipeError lists every problem (exit 2)."""
    path = Path(os.path.realpath(path))
    file = str(path)
    try:
        data = limits.read_regular(path, MAX_POLICY_BYTES, "policy file")
    except NotFound:
        raise NotFound(f"no policy file at {path}", hint=f"write one: see {NAME} in docs") from None
    try:
        text, raw = parse_toml(file, data)
    except RecipeError as exc:  # the TOML parser's own problems, with their lines
        problems = [_parse_problem(found, data) for found in exc.problems]
        raise RecipeError(problems, hint=f"see {DOCS}", what="policy file") from None
    index = Lines(text)

    def problem(key_path: Sequence[str | int], message: str) -> Problem:
        return Problem(file, index.line_of(key_path), format_path(key_path), message)

    problems = [problem(where, message) for where, message, _stop in limits.value_problems(raw)]
    if not problems:
        problems = [problem(where, message) for where, message in pipeline_problems(raw)]
        try:
            model = PolicyModel.model_validate(raw)
        except ValidationError as exc:
            problems += pydantic_problems(file, index, exc, DOCS)
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise RecipeError(problems, hint=f"see {DOCS} for every key", what="policy file")
    return Policy(model, path, hashlib.sha256(data).hexdigest())


def find(home: Home, given: Path | None = None) -> Policy:
    """The policy in force (kiln.lifecycle.policyfile), loaded; the empty one if none."""
    path = locate(home, given)
    return load(path) if path is not None else Policy(PolicyModel())
