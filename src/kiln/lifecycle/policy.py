"""The policy file: what a promotion needs per channel, which keys kiln trusts, what gc keeps.

```toml
# kiln.toml, beside the recipes
[trust]
keys = ["keys/release.pub"]     # trusted public keys (PEM), relative to this file
require_signatures = false      # kiln run refuses an image without a valid signature

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

[retention]                     # kiln gc; flags override
keep_last = 5
keep_younger_than = "30d"
keep_channel_history = "14d"
```

It is validated like a recipe (every problem at once, with file:line and key path; exit 2).
Which file: ``--policy PATH``, else ``KILN_POLICY``, else ``kiln.toml`` in the current
folder, else ``$KILN_HOME/kiln.toml``; without one there are no gates, no trust policy and
gc keeps what its flags say. Commands that apply a policy say which file they used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from kiln import refs
from kiln.durations import seconds
from kiln.errors import NotFound, Problem, RecipeError
from kiln.home import Home
from kiln.lifecycle.locate import MAX_POLICY_BYTES, NAME, locate
from kiln.recipe import limits
from kiln.recipe.load import parse_toml, pydantic_problems
from kiln.recipe.locate import LineIndex
from kiln.schema import Model


def _duration(value: str | None) -> str | None:
    if value is not None:
        seconds(value)
    return value


class Gates(Model):
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
        if value is not None and not refs.is_channel(value):
            raise ValueError(f"'{value}' is not a channel name (a letter first; not latest)")
        return value

    @field_validator("soak", "max_security_age", "proven_within")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return _duration(value)

    @property
    def soak_seconds(self) -> int:
        return seconds(self.soak) if self.soak else 0


class Trust(Model):
    keys: tuple[str, ...] = ()
    require_signatures: bool = False


class Retention(Model):
    keep_last: int | None = Field(default=None, ge=0, le=1_000_000)
    keep_younger_than: str | None = None
    keep_channel_history: str | None = None

    @field_validator("keep_younger_than", "keep_channel_history")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return _duration(value)


class Freshness(Model):
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


class PolicyModel(Model):
    trust: Trust = Trust()
    channels: dict[str, Gates] = Field(default_factory=dict)
    retention: Retention = Retention()
    freshness: Freshness = Freshness()

    @field_validator("channels")
    @classmethod
    def _names(cls, value: dict[str, Gates]) -> dict[str, Gates]:
        bad = [name for name in value if not refs.is_channel(name)]
        if bad:
            raise ValueError(
                f"not channel names (a letter first, then letters, digits, - and _; "
                f"never latest): {', '.join(map(repr, bad))}"
            )
        return value


@dataclass(frozen=True)
class Policy:
    """A loaded policy, or the empty one (``path`` None)."""

    model: PolicyModel
    path: Path | None = None
    digest: str = ""  # sha256 of the file's bytes

    def gates(self, channel: str) -> Gates:
        return self.model.channels.get(channel, Gates())

    @property
    def trust(self) -> Trust:
        return self.model.trust

    @property
    def retention(self) -> Retention:
        return self.model.retention

    @property
    def freshness(self) -> Freshness:
        return self.model.freshness

    def key_paths(self) -> list[Path]:
        """The trusted keys' files, relative to the policy file's folder."""
        folder = self.path.parent if self.path else Path.cwd()
        return [folder / key for key in self.model.trust.keys]

    def describe(self) -> dict[str, str | None]:
        return {"path": str(self.path) if self.path else None, "digest": self.digest or None}


def load(path: Path) -> Policy:
    """Load and validate a policy file; RecipeError lists every problem (exit 2)."""
    path = Path(os.path.realpath(path))
    file = str(path)
    try:
        data = limits.read_regular(path, MAX_POLICY_BYTES, "policy file")
    except NotFound:
        raise NotFound(f"no policy file at {path}", hint=f"write one: see {NAME} in docs") from None
    text, raw = parse_toml(file, data)
    index = LineIndex(text)
    problems: list[Problem] = []
    for key_path, message, _stop in limits.value_problems(raw):
        problems.append(
            Problem(file, index.line_of(key_path), ".".join(map(str, key_path)), message)
        )
    if not problems:
        try:
            model = PolicyModel.model_validate(raw)
        except ValidationError as exc:
            problems = pydantic_problems(file, index, exc, "docs/lifecycle.md")
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise RecipeError(problems, hint="see docs/lifecycle.md for every key", what="policy file")
    return Policy(model, path, hashlib.sha256(data).hexdigest())


def find(home: Home, given: Path | None = None) -> Policy:
    """The policy in force (kiln.lifecycle.locate), loaded; the empty one if none."""
    path = locate(home, given)
    return load(path) if path is not None else Policy(PolicyModel())
