"""OCI config and manifest for a new image: the parent's, plus one layer and one history entry.

Nothing here may depend on the host that bakes (its name, its paths): the same inputs give
the same manifest digest anywhere. Who built the image is said in the provenance, a
referrer outside the digest.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime
from typing import Any

from kiln import __version__
from kiln.bake.bases import imported
from kiln.bake.context import BuildContext
from kiln.proc import BASE_ENV
from kiln.store.layout import MEDIA_MANIFEST, Descriptor
from kiln.times import rfc3339

LABEL = "org.kiln."
Checks = list[dict[str, object]]  # what the seal removed and asserted (kiln.bake.seal)
Special = list[dict[str, str]]  # device nodes and setuid/setgid files of an imported base

ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def labels(
    context: BuildContext, created: datetime, seal_checks: Checks, special: Special | None
) -> dict[str, str]:
    recipe = context.recipe
    out = {
        f"{LABEL}name": recipe.name,
        f"{LABEL}recipe.digest": f"sha256:{recipe.digest}",
        f"{LABEL}recipe.path": recipe.path.name,
        f"{LABEL}parent.digest": context.parent.manifest.digest if context.parent else "",
        f"{LABEL}cache-key": context.cache_key,
        f"{LABEL}version": __version__,
        "org.opencontainers.image.created": rfc3339(created),
        "org.opencontainers.image.title": recipe.name,
    }
    if recipe.recipe.image.description:
        out["org.opencontainers.image.description"] = recipe.recipe.image.description
    out[f"{LABEL}seal"] = json.dumps(seal_checks, sort_keys=True)
    runtime = recipe.recipe.runtime
    if runtime != type(runtime)():
        out[f"{LABEL}runtime"] = json.dumps(runtime.model_dump(mode="json"), sort_keys=True)
    tests = recipe.recipe.tests
    if tests != type(tests)():  # kiln test reads them from here, without the recipe file
        out[f"{LABEL}tests"] = json.dumps(tests.model_dump(mode="json"), sort_keys=True)
    if recipe.recipe.image.origin == "import":
        special = special or []
        out[IMPORT_SPECIAL] = json.dumps(special[: imported.MAX_LISTED], sort_keys=True)
    return out


IMPORT_SPECIAL = f"{LABEL}import.special"


def import_special(context: BuildContext) -> Special:
    """What an imported base holds that a person should look at (devices, setuid and
    setgid files): found once, right after the import and before any step runs, and told
    in the log."""
    found = imported.special_files(context.layer_source)
    if found:
        context.log(
            f"the imported root holds {len(found)} device node(s) or setuid/setgid "
            f"file(s) (label {IMPORT_SPECIAL} in kiln inspect):\n" + imported.describe(found)
        )
    return found


def config(
    context: BuildContext,
    diff_id: str,
    created: datetime,
    seal_checks: Checks,
    special: Special | None,
) -> dict[str, Any]:
    """The image config; ``diff_id`` is the new layer's (the sha256 of its tar stream);
    ``seal_checks`` and ``special`` (an imported base's) are told in its labels."""
    parent: dict[str, Any] = dict(context.parent.config) if context.parent else {}
    inherited = dict((parent.get("config") or {}).get("Labels") or {})
    image_config = dict(parent.get("config") or {})
    image_config.setdefault("Env", [f"PATH={BASE_ENV['PATH']}"])
    image_config["Labels"] = {**inherited, **labels(context, created, seal_checks, special)}
    history = list(parent.get("history") or [])
    history.append(
        {
            "created": rfc3339(created),
            "created_by": f"kiln {__version__} bake {context.recipe.path.name}",
            "comment": context.recipe.recipe.image.description or context.recipe.name,
        }
    )
    diff_ids = context.parent.diff_ids if context.parent else []
    return {
        "created": rfc3339(created),
        "architecture": parent.get("architecture") or ARCH.get(platform.machine(), "amd64"),
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [*diff_ids, diff_id]},
        "history": history,
    }


def manifest(context: BuildContext, config_desc: Descriptor, layer: Descriptor) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    if context.parent:
        parent_manifest = context.layout.read_json(context.parent.manifest.digest)
        layers = list(parent_manifest["layers"])
    layers.append(layer.to_json())
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_desc.to_json(),
        "layers": layers,
    }
