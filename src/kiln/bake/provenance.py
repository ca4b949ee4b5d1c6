"""SLSA provenance v1, as an in-toto statement about the image manifest.

It records what went in (recipe, lock, parent digest, every copied input's digest, the
packages this layer added), who built it (kiln and the host) and when (start and end).
The host is named here and nowhere in the image, so the image's digest does not depend on it.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from kiln import __version__
from kiln.bake.context import BuildContext
from kiln.bake.sbom import purl
from kiln.recipe import lockfile
from kiln.recipe.lockfile import Deb
from kiln.times import rfc3339

MEDIA_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:kiln:bake:v1"


def _sha(value: str) -> dict[str, str]:
    return {"sha256": value.split(":", 1)[-1]}


def statement(
    context: BuildContext,
    packages: list[Deb],
    ref: str,
    manifest_digest: str,
    layer_digest: str,
    finished: datetime,
) -> dict[str, Any]:
    """``packages``: what the image holds (kiln.bake.packages.record)."""
    recipe = context.recipe
    dependencies: list[dict[str, Any]] = [
        {"name": "recipe", "uri": f"file:{recipe.path.name}", "digest": _sha(recipe.digest)},
    ]
    if context.parent is not None:
        dependencies.append(
            {
                "name": "parent",
                "uri": f"oci:{context.parent.ref}",
                "digest": _sha(context.parent.manifest.digest),
            }
        )
    lock = lockfile.lock_path(recipe.path)
    if context.lock is not None:
        dependencies.append(
            {"name": "lock", "uri": f"file:{lock.name}", "digest": _sha(context.lock.digest)}
        )
    for material in sorted(context.materials, key=lambda m: m.key):
        dependencies.append(
            {
                "name": material.key,
                "uri": f"file:{material.path}",
                "digest": {"sha256": material.digest},
                # a folder's digest is kiln's tree digest (names, modes, contents)
                "annotations": {"kiln.digest": material.kind},
            }
        )
    inherited = {deb.key for deb in context.parent_packages}
    for deb in packages:
        if deb.key not in inherited and deb.sha256:
            dependencies.append(
                {"uri": purl(deb, None).to_string(), "digest": {"sha256": deb.sha256}}
            )
    image = recipe.recipe.image
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": ref, "digest": _sha(manifest_digest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": recipe.path.name,
                    "parent": image.parent,
                    "origin": image.origin,
                    "mirror": context.options.mirror,
                    "noCache": context.options.no_cache,
                },
                "internalParameters": {
                    "builderHost": socket.gethostname(),
                    "cacheKey": context.cache_key,
                    "sourceDateEpoch": context.source_date_epoch,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": f"urn:kiln:builder:{socket.gethostname()}",
                    "version": {"kiln": __version__},
                },
                "metadata": {
                    "invocationId": context.build_dir.name,
                    "startedOn": rfc3339(context.started),
                    "finishedOn": rfc3339(finished),
                },
                "byproducts": [{"name": "layer", "digest": _sha(layer_digest)}],
            },
        },
    }
