"""Moving one image between the store and a registry or an OCI layout folder.

skopeo moves the image itself, its digest preserved (``--preserve-digests``: kiln's layers
are compressed at rest, so nothing is recompressed). What hangs off the image moves
through kiln.store.registry: the artefacts kiln stores as OCI 1.1 referrers (provenance,
SBOM, lock, source, inventory) and the cosign signature manifest at ``sha256-<hex>.sig``.
A registry without the referrers API gets the referrers tag schema: an index at
``sha256-<hex>`` listing them.

Taking an image in, skopeo writes into a scratch layout under ``tmp/``, seeded with hard
links to the blobs the store already has (skopeo skips those); every new blob is hashed
before it is linked into the store, and nothing is tagged until all of them are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import locks, proc
from kiln.digests import canonical_json, file_sha256
from kiln.errors import KilnError
from kiln.store import artefacts, inventory
from kiln.store.artefacts import KIND, SUBJECT
from kiln.store.layout import MEDIA_MANIFEST, Descriptor, Layout, signature_tag
from kiln.store.registry import MEDIA_INDEX, Client, auth_file, referrers_tag
from kiln.store.remote import Registry

# what kiln attaches to an image, by the artifactType a registry lists it with
KINDS = {
    "application/vnd.in-toto+json": "provenance",
    "application/vnd.cyclonedx+json": "sbom",
    artefacts.MEDIA_LOCK: artefacts.LOCK,
    "application/vnd.kiln.source.v1.tar": "source",
    inventory.ARTIFACT_TYPE: inventory.ARTEFACT,
}
MAX_ATTACHED = 64  # referrers of one image kiln takes in; more is refused


def skopeo(source: str, dest: str, *, insecure: bool = False) -> None:
    """``skopeo copy`` with the digest kept, the containers auth file, and plain HTTP to a
    loopback registry only when ``insecure``."""
    argv = ["skopeo", "copy", "--quiet", "--preserve-digests", "--retry-times=2"]
    found = auth_file()
    if found is not None:
        argv.append(f"--authfile={found}")
    if insecure:
        argv += ["--src-tls-verify=false", "--dest-tls-verify=false"]
    result = proc.run([*argv, source, dest], check=False)
    if result.returncode != 0:
        text = result.stdout.decode(errors="replace").strip()
        raise KilnError(
            f"skopeo could not copy {source} to {dest}: {text[-800:]}",
            hint="check the address, the registry's login (skopeo login) and --insecure for a "
            "plain-HTTP registry on loopback",
        )


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_blobs(layout: Layout, digest: str) -> list[Descriptor]:
    """The config and layers of a stored image manifest."""
    data = layout.read_json(digest)
    return [Descriptor.from_json(d) for d in [data["config"], *data["layers"]]]


def attached(layout: Layout, digest: str) -> list[dict[str, Any]]:
    """index.json's referrer entries about ``digest``."""
    return [
        entry
        for entry in layout.read_index()["manifests"]
        if (entry.get("annotations") or {}).get(SUBJECT) == digest
    ]


# push
def push_attachments(layout: Layout, client: Client, repository: str, digest: str) -> list[str]:
    """Send the image's referrers and signature after it; returns the kinds sent."""
    sent: list[str] = []
    listed: list[dict[str, Any]] = []
    for entry in attached(layout, digest):
        layout.verify_blob(entry["digest"], "an artefact manifest")
        data = layout.read_bytes(entry["digest"])
        for blob in _blobs_of(json.loads(data)):
            client.push_blob(repository, layout, blob)
        answer = client.push_manifest(repository, entry["digest"], data, MEDIA_MANIFEST)
        if "OCI-Subject" not in answer.headers:  # no referrers API: the tag schema
            listed.append(_listing(entry))
        sent.append(entry["annotations"][KIND])
    if listed:
        _merge_referrers_index(client, repository, digest, listed)
    signature = layout.tagged(signature_tag(digest))
    if signature is not None:
        layout.verify_blob(signature.digest, "the signature manifest")
        data = layout.read_bytes(signature.digest)
        for blob in _blobs_of(json.loads(data)):
            client.push_blob(repository, layout, blob)
        client.push_manifest(repository, signature_tag(digest), data, signature.media_type)
        sent.append("signature")
    return sent


def _listing(entry: dict[str, Any]) -> dict[str, Any]:
    annotations = entry.get("annotations") or {}
    out: dict[str, Any] = {
        k: entry[k] for k in ("mediaType", "digest", "size", "artifactType") if k in entry
    }
    out["annotations"] = {k: annotations[k] for k in (KIND, SUBJECT) if k in annotations}
    return out


def _merge_referrers_index(
    client: Client, repository: str, digest: str, listed: list[dict[str, Any]]
) -> None:
    """Add ``listed`` to the index at the referrers tag, keeping what others put there."""
    found = client.manifest(repository, referrers_tag(digest))
    manifests: list[dict[str, Any]] = []
    if found is not None:
        manifests = [m for m in json.loads(found[0]).get("manifests", []) if isinstance(m, dict)]
    known = {m.get("digest") for m in manifests}
    manifests += [m for m in listed if m["digest"] not in known]
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
    client.push_manifest(repository, referrers_tag(digest), canonical_json(index), MEDIA_INDEX)


def _blobs_of(manifest: dict[str, Any]) -> list[Descriptor]:
    return [Descriptor.from_json(d) for d in [manifest["config"], *manifest.get("layers", [])]]


# pull
@dataclass(frozen=True)
class Fetched:
    """An image taken into the store's blobs (not tagged yet) with what hangs off it."""

    digest: str
    manifest: Descriptor
    referrers: list[Descriptor]  # kiln's artefacts, as index.json lists them
    signature: Descriptor | None  # the cosign signature manifest, stored


def resolve(client: Client, where: Registry) -> tuple[str, dict[str, Any]]:
    """The digest and manifest at a tag or digest; an image manifest, nothing else."""
    reference = where.digest or where.tag or "latest"
    found = client.manifest(where.repository, reference)
    if found is None:
        raise KilnError(
            f"{where} names no image in the registry",
            hint="push it first (kiln push), or check the name and tag",
        )
    data, _media_type = found
    digest = digest_of(data)
    try:
        manifest = json.loads(data)
        ok = manifest.get("mediaType", MEDIA_MANIFEST) == MEDIA_MANIFEST and "layers" in manifest
    except ValueError:
        ok = False
    if not ok:
        raise KilnError(
            f"{where} is not an OCI image manifest (an index or a Docker schema): kiln pulls "
            "one image for one platform",
            hint="pull the platform's image by its digest",
        )
    return digest, manifest


def fetch_image(
    layout: Layout, source: str, digest: str, manifest: dict[str, Any], insecure: bool
) -> Descriptor:
    """Copy the image ``source`` (by digest) into the store's blobs with skopeo; return its
    manifest's descriptor. Blobs the store has are not fetched again."""
    blobs = [Descriptor.from_json(d) for d in [manifest["config"], *manifest["layers"]]]
    with locks.scratch_dir(layout.tmp, "pull-") as folder:
        scratch = Path(folder)
        shared = scratch / "blobs" / "sha256"
        shared.mkdir(parents=True)
        for blob in blobs:
            if layout.has_blob(blob.digest):
                os.link(layout.blob_path(blob.digest), shared / blob.hex)
        skopeo(source, f"oci:{scratch}:pull", insecure=insecure)
        for descriptor in [*blobs, Descriptor(MEDIA_MANIFEST, digest, 0)]:
            _take_blob(layout, shared / descriptor.hex, descriptor.digest)
    stored = layout.read_bytes(digest)
    return Descriptor(MEDIA_MANIFEST, digest, len(stored))


def _take_blob(layout: Layout, path: Path, digest: str) -> None:
    """Link a fetched blob into the store once it hashes to its name."""
    if layout.has_blob(digest) and os.path.samefile(path, layout.blob_path(digest)):
        return
    try:
        actual = "sha256:" + file_sha256(path)
    except FileNotFoundError:
        raise KilnError(f"skopeo left no blob {digest}: the copy is incomplete") from None
    if actual != digest:
        raise KilnError(f"the blob {digest} that arrived hashes to {actual}: refused")
    if layout.has_blob(digest):
        layout.verify_blob(digest, "a blob the store had")
        return
    os.chmod(path, 0o644)
    try:
        os.link(path, layout.blob_path(digest))
    except FileExistsError:
        layout.verify_blob(digest, "a blob stored meanwhile")


def fetch_attachments(
    layout: Layout, client: Client, repository: str, digest: str
) -> tuple[list[Descriptor], Descriptor | None]:
    """kiln's referrers of ``digest`` and its signature manifest, every blob verified into
    the store; unknown artefact types are left where they are."""
    found = client.referrers(repository, digest)
    if len(found) > MAX_ATTACHED:
        raise KilnError(
            f"{repository}@{digest} has {len(found)} referrers: over {MAX_ATTACHED}, refused"
        )
    referrers: list[Descriptor] = []
    kinds: set[str] = set()
    for entry in sorted(found, key=lambda e: str(e.get("digest"))):
        kind = KINDS.get(str(entry.get("artifactType")))
        if kind is None or kind in kinds:
            continue
        stored = _fetch_manifest(layout, client, repository, str(entry.get("digest")))
        data = json.loads(layout.read_bytes(stored.digest))
        if (data.get("subject") or {}).get("digest") != digest:
            raise KilnError(
                f"the referrer {stored.digest} in {repository} is not about {digest}: refused"
            )
        kinds.add(kind)
        referrers.append(
            Descriptor(
                MEDIA_MANIFEST,
                stored.digest,
                stored.size,
                annotations=((KIND, kind), (SUBJECT, digest)),
                artifact_type=data.get("artifactType"),
            )
        )
    signature = None
    sig = client.manifest(repository, signature_tag(digest))
    if sig is not None:
        signature = _store_manifest(layout, client, repository, sig[0], sig[1] or MEDIA_MANIFEST)
    return referrers, signature


def _fetch_manifest(layout: Layout, client: Client, repository: str, digest: str) -> Descriptor:
    found = client.manifest(repository, digest)  # checked against the digest
    if found is None:
        raise KilnError(f"the registry lists {digest} in {repository} but has no such manifest")
    return _store_manifest(layout, client, repository, found[0], MEDIA_MANIFEST)


def _store_manifest(
    layout: Layout, client: Client, repository: str, data: bytes, media_type: str
) -> Descriptor:
    try:
        blobs = _blobs_of(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise KilnError(f"a manifest in {repository} is not one kiln can read: {exc}") from None
    for blob in blobs:
        client.fetch_blob(repository, blob, layout)
    return layout.put_bytes(data, media_type)


# an OCI layout folder as the other end
def copy_attachments(
    source: Layout, dest: Layout, digest: str
) -> tuple[list[Descriptor], Descriptor | None]:
    """kiln's referrers and the signature of ``digest`` from one layout into another's
    blobs, each blob checked against its digest as it is copied; returns what to list in
    the destination's index.json and the signature manifest to tag."""
    referrers = []
    for entry in attached(source, digest):
        descriptor = _copy_manifest(source, dest, entry["digest"], MEDIA_MANIFEST)
        annotations = entry.get("annotations") or {}
        kind = KINDS.get(str(entry.get("artifactType")), annotations.get(KIND, ""))
        referrers.append(
            Descriptor(
                MEDIA_MANIFEST,
                descriptor.digest,
                descriptor.size,
                annotations=((KIND, kind), (SUBJECT, digest)),
                artifact_type=entry.get("artifactType"),
            )
        )
    signature = source.tagged(signature_tag(digest))
    if signature is not None:
        signature = _copy_manifest(source, dest, signature.digest, signature.media_type)
    return referrers, signature


def _copy_manifest(source: Layout, dest: Layout, digest: str, media_type: str) -> Descriptor:
    data = _verified(source, digest)
    for blob in _blobs_of(json.loads(data)):
        dest.put_bytes(_verified(source, blob.digest), blob.media_type)
    return dest.put_bytes(data, media_type)


def _verified(layout: Layout, digest: str) -> bytes:
    data = layout.read_bytes(digest)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise KilnError(f"the blob {digest} in {layout.blobs} is corrupt: refused")
    return data
