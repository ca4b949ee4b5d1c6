"""Artefacts about an image (provenance, SBOM, its lock), stored as OCI 1.1 referrers.

Each artefact is a manifest whose ``subject`` is the image manifest, with an empty config
and the document as its one layer. index.json lists it without a ref name, annotated with
the subject and the kind, so finding an image's artefacts needs no scan of the blobs.
"""

from __future__ import annotations

import json
from typing import Any

from kiln.digests import digest_of
from kiln.errors import StoreError
from kiln.store.layout import FSCK_HINT, MEDIA_MANIFEST, Descriptor, Layout

MEDIA_EMPTY = "application/vnd.oci.empty.v1+json"
SUBJECT = "org.kiln.subject"
KIND = "org.kiln.artefact"
LOCK = "lock"  # the lock an image was baked from, as the text of a lock file
MEDIA_LOCK = "application/vnd.kiln.lock.v1+text"


def put(
    layout: Layout, subject: Descriptor, kind: str, media_type: str, data: bytes, created: str
) -> Descriptor:
    """Store the document and its artefact manifest; return the manifest's descriptor."""
    empty = layout.put_bytes(b"{}", MEDIA_EMPTY)
    blob = layout.put_bytes(data, media_type)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": media_type,
        "config": empty.to_json(),
        "layers": [blob.to_json()],
        "subject": subject.to_json(),
        "annotations": {"org.opencontainers.image.created": created},
    }
    stored = layout.put_json(manifest, MEDIA_MANIFEST)
    return Descriptor(
        MEDIA_MANIFEST,
        stored.digest,
        stored.size,
        annotations=((KIND, kind), (SUBJECT, subject.digest)),
        artifact_type=media_type,
    )


def find(layout: Layout, subject_digest: str, kind: str) -> bytes | None:
    """The document of the given kind about ``subject_digest``, if stored; the artefact
    manifest and the document are each checked against their digests first."""
    for entry in layout.read_index()["manifests"]:
        annotations = entry.get("annotations") or {}
        if annotations.get(SUBJECT) == subject_digest and annotations.get(KIND) == kind:
            manifest = json.loads(verified(layout, entry["digest"], f"the {kind} manifest"))
            return verified(layout, manifest["layers"][0]["digest"], f"the {kind} document")
    return None


def verified(layout: Layout, digest: str, what: str) -> bytes:
    """A stored blob's bytes, checked against its digest (StoreError naming it if not)."""
    data = layout.read_bytes(digest)
    actual = digest_of(data)
    if actual != digest:
        raise StoreError(
            f"{what} {digest} in {layout.blobs} is corrupt (its content hashes to {actual})",
            hint=FSCK_HINT,
        )
    return data
