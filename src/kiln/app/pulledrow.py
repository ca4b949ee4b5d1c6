"""What a pulled image's catalog row says, read from what came with it: the provenance
(its name and version where it was baked, recipe, cache key, parent, build times) and
the SBOM (its packages). Both are documents from elsewhere: each field is checked, and
one that is missing or malformed is an error naming it, never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from packageurl import PackageURL

from kiln import refs
from kiln.errors import KilnError

MAX_PACKAGES = 100_000
PackageFields = tuple[str, str, str, str]  # name, version, architecture, .deb sha256


@dataclass(frozen=True)
class Origin:
    """Where and how the image was baked, as its provenance says."""

    name: str
    version: int
    recipe: str
    recipe_digest: str
    cache_key: str
    origin: str
    parent_ref: str | None  # name:version where it was baked
    parent_digest: str | None
    started: datetime
    finished: datetime


def _bad(what: str, source: str) -> KilnError:
    return KilnError(
        f"the provenance of {source} {what}: kiln cannot record the image",
        hint="push the image again from the store that baked it (kiln push)",
    )


def origin(document: bytes, digest: str, source: str) -> Origin:
    """Read the provenance kiln wrote at the bake (kiln.bake.provenance)."""
    try:
        statement = json.loads(document)
        subject = statement["subject"][0]
        build = statement["predicate"]["buildDefinition"]
        params = build["externalParameters"]
        internal = build["internalParameters"]
        metadata = statement["predicate"]["runDetails"]["metadata"]
        dependencies = build["resolvedDependencies"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _bad("is not an in-toto statement kiln wrote", source) from None
    if f"sha256:{subject.get('digest', {}).get('sha256')}" != digest:
        raise _bad(f"is about another image, not {digest}", source)
    name, _, version = str(subject.get("name", "")).partition(":")
    if refs.problem(f"{name}:{version}") is not None or not version.isdigit():
        raise _bad(f"names no image as name:version ({subject.get('name')!r})", source)
    by_name = {d.get("name"): d for d in dependencies if isinstance(d, dict)}
    recipe = by_name.get("recipe") or {}
    parent = by_name.get("parent")
    parent_ref = parent_digest = None
    if parent is not None:
        parent_ref = str(parent.get("uri", "")).removeprefix("oci:")
        parent_digest = f"sha256:{(parent.get('digest') or {}).get('sha256', '')}"
        if refs.problem(parent_ref) is not None or not parent_ref.partition(":")[2].isdigit():
            raise _bad(f"names its parent oddly ({parent_ref!r})", source)
        if len(parent_digest) != 71:
            raise _bad("gives no digest for its parent", source)
    try:
        started = _time(metadata["startedOn"])
        finished = _time(metadata["finishedOn"])
    except (KeyError, ValueError, TypeError):
        raise _bad("has no start and end times", source) from None
    return Origin(
        name=name,
        version=int(version),
        recipe=str(params.get("recipe", "")),
        recipe_digest=str((recipe.get("digest") or {}).get("sha256", "")),
        cache_key=str(internal.get("cacheKey") or ""),
        origin=str(params.get("origin") or "parent"),
        parent_ref=parent_ref,
        parent_digest=parent_digest,
        started=started,
        finished=finished,
    )


def _time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def packages(document: bytes | None, source: str) -> list[PackageFields]:
    """The Debian packages the SBOM lists: name, version, architecture, .deb sha256."""
    if document is None:
        return []
    try:
        components = json.loads(document).get("components", [])
    except (ValueError, AttributeError):
        raise KilnError(f"the SBOM of {source} is not CycloneDX JSON") from None
    if not isinstance(components, list) or len(components) > MAX_PACKAGES:
        raise KilnError(f"the SBOM of {source} lists its components oddly")
    out: list[PackageFields] = []
    for component in components:
        try:
            purl = PackageURL.from_string(component["purl"])
            if purl.type != "deb":
                continue
            qualifiers = purl.qualifiers if isinstance(purl.qualifiers, dict) else {}
            sha = next(
                (h["content"] for h in component.get("hashes", []) if h.get("alg") == "SHA-256"),
                "",
            )
            out.append((str(purl.name), str(purl.version), str(qualifiers.get("arch", "")), sha))
        except (KeyError, ValueError, TypeError, AttributeError):
            raise KilnError(f"the SBOM of {source} has a package kiln cannot read") from None
    return out


def layer_size(manifest: dict[str, Any]) -> int:
    """The image's own layer: the last one its manifest lists."""
    layers = manifest.get("layers") or []
    return int(layers[-1]["size"]) if layers else 0
