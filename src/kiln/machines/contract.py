"""The runtime contract of an image, read from the labels of its OCI config.

The bake writes the recipe's validated ``[runtime]`` and ``[tests]`` tables into the
labels ``org.kiln.runtime`` and ``org.kiln.tests`` as JSON. They are kiln's own output,
so reading them back is a matter of shape, not of validation; anything else is a damaged
store. Reading plain JSON here keeps ``kiln run`` from loading the recipe schema on its
way to boot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln import durations
from kiln.errors import StoreError

RUNTIME_LABEL = "org.kiln.runtime"
TESTS_LABEL = "org.kiln.tests"


@dataclass(frozen=True)
class Key:
    name: str
    required: bool = False
    default: str | None = None
    secret: bool = False
    description: str = ""


@dataclass(frozen=True)
class Health:
    http: str | None = None
    command: str | None = None
    timeout: float = 30.0

    def describe(self) -> str:
        return f"GET {self.http}" if self.http else f"command {self.command!r}"


@dataclass(frozen=True)
class Contract:
    state: tuple[str, ...] = ()
    keys: Mapping[str, Key] = field(default_factory=dict)
    health: Health | None = None

    @property
    def secret_keys(self) -> list[str]:
        return sorted(k for k, key in self.keys.items() if key.secret)


def seconds(duration: str) -> float:
    """A health check's timeout as the recipe wrote it (kiln.durations; a bare number is
    seconds)."""
    return durations.span(duration, bare=True)


def _labels(config: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (config.get("config") or {}).get("Labels") or {}
    return labels if isinstance(labels, dict) else {}


def _json(labels: Mapping[str, str], name: str) -> dict[str, Any] | None:
    text = labels.get(name)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"the image's {name} label is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise StoreError(f"the image's {name} label is not a JSON object")
    return value


def from_config(config: Mapping[str, Any]) -> Contract:
    """The contract in an image's OCI config; an image without one has an empty contract."""
    data = _json(_labels(config), RUNTIME_LABEL)
    return Contract() if data is None else from_json(data)


def from_json(data: Mapping[str, Any]) -> Contract:
    """A contract from the JSON form of a recipe's [runtime] table."""
    try:
        keys = {
            name: Key(
                name=name,
                required=bool(spec.get("required", False)),
                default=spec.get("default"),
                secret=bool(spec.get("secret", False)),
                description=str(spec.get("description", "")),
            )
            for name, spec in (data.get("config") or {}).items()
        }
        health = None
        if data.get("health"):
            spec = data["health"]
            health = Health(spec.get("http"), spec.get("command"), seconds(spec["timeout"]))
        return Contract(tuple(data.get("state") or ()), keys, health)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"the image's {RUNTIME_LABEL} label is damaged: {exc}") from None


def commands_from_config(config: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The image's test commands; None when the image carries no tests label."""
    data = _json(_labels(config), TESTS_LABEL)
    if data is None:
        return None
    commands = data.get("commands") or []
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise StoreError(f"the image's {TESTS_LABEL} label is damaged")
    return tuple(commands)
