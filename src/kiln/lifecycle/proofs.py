"""Rebuild proofs read back: the newest proof of each image, the ``proven_within`` gate, and
the comparison of a recipe's recorded inputs with what its folder holds now.

A proof (``kiln rebuild REF --prove``, kiln.app.proof) rebakes an image and its parent chain
from scratch and records in ``proofs`` whether the digest came out the same. Promotion
asks for a passed proof of the very digest being promoted, young enough; ``kiln where``
shows the newest proof of each image, read in one query for the whole catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.catalog import evidence
from kiln.catalog.lookup import ImageRow, Lookup, iso, moment
from kiln.durations import seconds


def summary(ok: Any, at: Any, rebuilt: str) -> dict[str, Any]:
    """A proof as kiln where shows it."""
    return {"ok": bool(ok), "at": iso(moment(at)), "rebuilt": rebuilt or None}


def latest(lookup: Lookup) -> dict[int, dict[str, Any]]:
    """The newest proof of each image that has one, by image id."""
    return {row[0]: summary(row[1], row[2], row[3]) for row in evidence.latest_proofs(lookup)}


def proven(
    lookup: Lookup, image: ImageRow, within: str | None, now: datetime
) -> tuple[bool, str] | None:
    """The ``proven_within`` gate: the newest proof of this exact digest passed and is no
    older than ``within``; None when the channel does not ask for one."""
    if within is None:
        return None
    again = f"kiln rebuild {image.ref} --prove"
    newest = evidence.newest_proof(lookup, image.digest)
    if newest is None:
        return False, f"no rebuild proof of {image.ref} ({image.digest[:19]}) is recorded: {again}"
    ok, at, _rebuilt = newest
    when = moment(at)
    if not ok:
        return False, f"the latest rebuild proof of {image.ref} ({iso(when)}) failed: {again}"
    age = (now - when).total_seconds()
    if age > seconds(within):
        return False, (
            f"the latest rebuild proof of {image.ref} ({iso(when)}) is older than "
            f"proven_within = {within!r}: {again}"
        )
    return True, f"rebuilt to the same digest at {iso(when)}"


@dataclass(frozen=True)
class Changed:
    """An input of a recipe that is not what the image was baked from."""

    recipe: str  # the recipe's path
    what: str  # recipe, or the key path of the input (steps[1].copy)
    path: str  # the file, relative to the recipe's folder
    expected: str  # the digest the bake recorded
    found: str | None  # the digest now; None when the file is missing

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "input": self.what,
            "path": self.path,
            "expected": self.expected,
            "found": self.found,
            "state": "missing" if self.found is None else "changed",
        }

    def line(self) -> str:
        if self.found is None:
            return f"{self.recipe}: {self.what} ({self.path}) is missing (was {self.expected})"
        return (
            f"{self.recipe}: {self.what} ({self.path}) changed: "
            f"baked from {self.expected}, the folder holds {self.found}"
        )


def recorded_inputs(provenance: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The copied inputs a bake recorded in its provenance: key path -> (path, sha256)."""
    definition = provenance.get("predicate", {}).get("buildDefinition", {})
    out: dict[str, tuple[str, str]] = {}
    for dependency in definition.get("resolvedDependencies", []):
        if "kiln.digest" not in (dependency.get("annotations") or {}):
            continue  # the recipe, the parent, the lock and packages are checked elsewhere
        path = str(dependency.get("uri", "")).removeprefix("file:")
        out[str(dependency["name"])] = (path, str(dependency["digest"]["sha256"]))
    return out


def changed_inputs(
    recipe: str, recorded: Mapping[str, tuple[str, str]], now: Iterable[tuple[str, str, str]]
) -> list[Changed]:
    """What differs between the inputs a bake recorded and ``now`` ((key, path, sha256) of
    each input the recipe reads today): changed, missing, or new."""
    found = {key: (path, digest) for key, path, digest in now}
    out = []
    for key, (path, digest) in sorted(recorded.items()):
        current = found.get(key)
        if current is None:
            out.append(Changed(recipe, key, path, f"sha256:{digest}", None))
        elif current[1] != digest or current[0] != path:
            out.append(Changed(recipe, key, current[0], f"sha256:{digest}", f"sha256:{current[1]}"))
    for key in sorted(found.keys() - recorded.keys()):
        path, digest = found[key]
        out.append(Changed(recipe, key, path, "nothing", f"sha256:{digest}"))
    return out
