"""The cache-key document: what a bake's key hashes, assembled by one function.

The full path (kiln.bake.cachekey) fills it from the validated recipe; the quick path
(kiln.bake.memo) from a memo of it, without loading the recipe models. Both call
:func:`document` and :func:`key_of`, so they cannot disagree about what a key is made of.
This module stays light: nothing here may import pydantic or a stage.
"""

from __future__ import annotations

from typing import Any

from kiln.apt.sources import mirror_lines
from kiln.digests import json_sha256
from kiln.errors import BadInput


def document(
    *,
    kiln: dict[str, Any],
    recipe: dict[str, Any],
    parent: str | None,
    inputs: dict[str, str],
    lock: str | None,
    sources: list[str] | None,
) -> dict[str, Any]:
    """Everything a key is made of: ``kiln``, the versions of the pipeline, its stages and
    step kinds; ``recipe``, the normalised recipe; ``parent``, the parent's manifest
    digest; ``inputs``, the digest of every file the recipe reads, by key path; ``lock``,
    the digest of the lock the bake is made from; ``sources``, a Debian base's mirror
    lines (:func:`image_sources`)."""
    return {
        "kiln": kiln,
        "parent": parent,
        "recipe": recipe,
        "inputs": inputs,
        "lock": lock,
        "sources": sources,
    }


def key_of(document: dict[str, Any]) -> str:
    return json_sha256(document)


def image_sources(
    suite: str, own: str | None, components: tuple[str, ...], fallback: str | None = None
) -> list[str]:
    """The lines a Debian base's sources.list holds: the recipe's mirror (``own``), else
    the host's Debian sources; a host without any falls back to the mirror setting."""
    try:
        return mirror_lines(suite, own, components)
    except BadInput:
        if fallback is None:
            raise
        return mirror_lines(suite, fallback, components)
