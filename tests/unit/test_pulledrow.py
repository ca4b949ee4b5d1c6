"""A pulled image's catalog row comes from its provenance and SBOM, documents from
elsewhere: what kiln wrote reads back, anything else is refused with what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln.app import pulledrow
from kiln.errors import KilnError

DIGEST = "sha256:" + "a" * 64
PARENT = "sha256:" + "b" * 64


def statement(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "subject": [{"name": "web:3", "digest": {"sha256": "a" * 64}}],
        "predicate": {
            "buildDefinition": {
                "externalParameters": {"recipe": "web.toml", "origin": "parent"},
                "internalParameters": {"cacheKey": "c" * 64},
                "resolvedDependencies": [
                    {"name": "recipe", "digest": {"sha256": "d" * 64}},
                    {"name": "parent", "uri": "oci:base:2", "digest": {"sha256": "b" * 64}},
                ],
            },
            "runDetails": {
                "metadata": {
                    "startedOn": "2026-12-07T10:00:00Z",
                    "finishedOn": "2026-12-07T10:00:12Z",
                }
            },
        },
    }
    document.update(changes)
    return document


def test_what_kiln_wrote_reads_back() -> None:
    made = pulledrow.origin(json.dumps(statement()).encode(), DIGEST, "docker://r/web:3")
    assert (made.name, made.version, made.parent_ref, made.parent_digest) == (
        "web",
        3,
        "base:2",
        PARENT,
    )
    assert made.cache_key == "c" * 64 and made.recipe_digest == "d" * 64
    assert (made.finished - made.started).total_seconds() == 12


@pytest.mark.parametrize(
    ("document", "why"),
    [
        (b"not json", "not an in-toto statement"),
        (json.dumps({"subject": []}).encode(), "not an in-toto statement"),
        (
            json.dumps(statement(subject=[{"name": "web:3", "digest": {"sha256": "f" * 64}}])),
            "another image",
        ),
        (
            json.dumps(statement(subject=[{"name": "../etc:3", "digest": {"sha256": "a" * 64}}])),
            "names no image",
        ),
        (
            json.dumps(statement(subject=[{"name": "web:x", "digest": {"sha256": "a" * 64}}])),
            "names no image",
        ),
    ],
)
def test_a_provenance_kiln_did_not_write_is_refused(document: bytes | str, why: str) -> None:
    data = document.encode() if isinstance(document, str) else document
    with pytest.raises(KilnError, match=why):
        pulledrow.origin(data, DIGEST, "docker://r/web:3")


def test_an_odd_parent_is_refused() -> None:
    document = statement()
    deps = document["predicate"]["buildDefinition"]["resolvedDependencies"]
    deps[1]["uri"] = "oci:base:2;rm -rf"
    with pytest.raises(KilnError, match="parent"):
        pulledrow.origin(json.dumps(document).encode(), DIGEST, "docker://r/web:3")


def test_packages_come_from_the_sbom() -> None:
    sbom = {
        "components": [
            {
                "name": "nginx",
                "version": "1.22.1-9",
                "purl": "pkg:deb/debian/nginx@1.22.1-9?arch=amd64&distro=debian-bookworm",
                "hashes": [{"alg": "SHA-256", "content": "e" * 64}],
            },
            {"name": "x", "purl": "pkg:pypi/x@1"},
        ]
    }
    assert pulledrow.packages(json.dumps(sbom).encode(), "s") == [
        ("nginx", "1.22.1-9", "amd64", "e" * 64)
    ]
    with pytest.raises(KilnError, match="cannot read"):
        pulledrow.packages(json.dumps({"components": [{"purl": 5}]}).encode(), "s")
    assert pulledrow.packages(None, "s") == []
