"""Moving an image between the store and a registry or an OCI layout folder.

skopeo moves the image itself, its digest preserved (``--preserve-digests``: kiln's layers
are compressed at rest, so nothing is recompressed). What hangs off the image moves
through kiln.store.registry while skopeo runs: the artefacts kiln stores as OCI 1.1
referrers (provenance, SBOM, lock, source, inventory) and the cosign signature manifest at
``sha256-<hex>.sig``. A registry without the referrers API gets the referrers tag schema:
an index at ``sha256-<hex>`` listing them. An image's parents need no bytes of their own
(a child's layers are its parents' and one more): their layers are mounted from the
child's repository, and their configs and manifests sent.

Taking an image in, skopeo writes into a scratch layout (kiln.store.incoming) whose blobs
are hashed as they arrive; nothing enters the store before it hashes to its name, and
nothing is tagged until all of them are.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kiln import proc
from kiln.digests import canonical_json, digest_of
from kiln.errors import KilnError
from kiln.store import artefacts, inventory
from kiln.store.artefacts import KIND, SUBJECT
from kiln.store.layout import MEDIA_MANIFEST, Descriptor, Layout, signature_tag
from kiln.store.registry import MEDIA_INDEX, Client, auth_file, parallel, referrers_tag
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
MAX_FOREIGN = 256 << 20  # an attachment or manifest read whole from another layout
SKOPEO_HINT = (
    "check the address, the registry's login (skopeo login) and --insecure for a "
    "plain-HTTP registry on loopback"
)


def _skopeo_argv(source: str, dest: str, insecure: bool) -> list[str]:
    argv = ["skopeo", "copy", "--quiet", "--preserve-digests", "--retry-times=2"]
    found = auth_file()
    if found is not None:
        argv.append(f"--authfile={found}")
    if insecure:
        argv += ["--src-tls-verify=false", "--dest-tls-verify=false"]
    return [*argv, source, dest]


@contextmanager
def copying(source: str, dest: str, *, insecure: bool = False) -> Iterator[None]:
    """``skopeo copy`` running while the block runs (with the digest kept, the containers
    auth file, plain HTTP to a loopback registry only when ``insecure``); it has finished,
    and succeeded, when the block is left. The block raising kills it."""
    argv = _skopeo_argv(source, dest, insecure)
    try:
        with proc.reading(argv):
            yield
    except proc.CommandError as exc:
        raise KilnError(
            f"skopeo could not copy {source} to {dest}: {exc.message[-800:]}", hint=SKOPEO_HINT
        ) from None


def attached(layout: Layout, digest: str) -> list[dict[str, Any]]:
    """index.json's referrer entries about ``digest``."""
    return [
        entry
        for entry in layout.read_index()["manifests"]
        if (entry.get("annotations") or {}).get(SUBJECT) == digest
    ]


def blobs_of(manifest: dict[str, Any]) -> list[Descriptor]:
    """The config and layers a manifest names."""
    return [Descriptor.from_json(d) for d in [manifest["config"], *manifest.get("layers", [])]]


# push
def push_attachments(layout: Layout, client: Client, repository: str, digest: str) -> list[str]:
    """Send the image's referrers and signature; returns the kinds sent. Their blobs go
    first, each once (every referrer names the same empty config), then the manifests;
    a referrer may arrive before its subject, as the distribution spec lets it."""
    entries = attached(layout, digest)
    signature = layout.tagged(signature_tag(digest))
    manifests = {e["digest"]: _read_manifest(layout, e["digest"]) for e in entries}
    if signature is not None:
        manifests[signature.digest] = _read_manifest(layout, signature.digest)
    blobs = {b.digest: b for _data, m in manifests.values() for b in blobs_of(m)}
    parallel(lambda blob: client.push_blob(repository, layout, blob), blobs.values())
    answers: dict[str, bool] = {}

    def send(entry: dict[str, Any]) -> None:
        data, manifest = manifests[entry["digest"]]
        media_type = manifest.get("mediaType", MEDIA_MANIFEST)
        answer = client.push_manifest(repository, entry["digest"], data, media_type)
        answers[entry["digest"]] = "OCI-Subject" in answer.headers

    parallel(send, entries)
    listed = [_listing(e) for e in entries if not answers[e["digest"]]]  # no referrers API
    if listed:
        _merge_referrers_index(client, repository, digest, listed)
    sent = [e["annotations"][KIND] for e in entries]
    if signature is not None:
        data, manifest = manifests[signature.digest]
        media_type = manifest.get("mediaType", MEDIA_MANIFEST)
        client.push_manifest(repository, signature_tag(digest), data, media_type)
        sent.append("signature")
    return sent


def _read_manifest(layout: Layout, digest: str) -> tuple[bytes, dict[str, Any]]:
    data = artefacts.verified(layout, digest, "a manifest to send")
    manifest: dict[str, Any] = json.loads(data)
    return data, manifest


def push_parent(
    layout: Layout, client: Client, where: Registry, child: Registry, digest: str, tag: str
) -> None:
    """Put a parent of an image pushed to ``child`` at ``where``:``tag``: its layers
    mounted from the child's repository (uploaded where a layer is not there), its config
    and manifest sent."""
    manifest = layout.read_json(digest)
    config, *layers = blobs_of(manifest)

    def place(blob: Descriptor) -> None:
        if not client.mount(where.repository, blob.digest, child.repository):
            client.push_blob(where.repository, layout, blob)

    parallel(place, layers)
    client.push_blob(where.repository, layout, config)
    data = layout.read_bytes(digest)
    client.push_manifest(where.repository, tag, data, manifest.get("mediaType", MEDIA_MANIFEST))


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


# pull
def resolve(client: Client, where: Registry) -> tuple[str, bytes, dict[str, Any]]:
    """The digest, bytes and content of the manifest at a tag or digest; an image
    manifest, nothing else."""
    reference = where.digest or where.tag or "latest"
    found = client.manifest(where.repository, reference)
    if found is None:
        raise KilnError(
            f"{where} names no image in the registry",
            hint="push it first (kiln push), or check the name and tag",
        )
    return digest_of(found[0]), found[0], image_manifest(found[0], str(where))


def image_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(data)
        ok = (
            isinstance(manifest, dict)
            and manifest.get("mediaType", MEDIA_MANIFEST) == MEDIA_MANIFEST
            and isinstance(manifest.get("layers"), list)
            and isinstance(manifest.get("config"), dict)
        )
    except ValueError:
        ok = False
    if not ok:
        raise KilnError(
            f"{where} is not an OCI image manifest (an index or a Docker schema): kiln pulls "
            "one image for one platform",
            hint="pull the platform's image by its digest",
        )
    return manifest


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
    chosen: dict[str, dict[str, Any]] = {}
    for entry in sorted(found, key=lambda e: str(e.get("digest"))):
        kind = KINDS.get(str(entry.get("artifactType")))
        if kind is not None and kind not in chosen:
            chosen[kind] = entry
    stored: dict[str, Descriptor] = {}

    def fetch(kind: str) -> None:
        stored[kind] = _fetch_manifest(layout, client, repository, str(chosen[kind]["digest"]))

    parallel(fetch, list(chosen))
    referrers: list[Descriptor] = []
    for kind in chosen:
        data = json.loads(layout.read_bytes(stored[kind].digest))
        if (data.get("subject") or {}).get("digest") != digest:
            raise KilnError(
                f"the referrer {stored[kind].digest} in {repository} is not about {digest}: refused"
            )
        referrers.append(_referrer(stored[kind], kind, digest, data.get("artifactType")))
    signature = None
    sig = client.manifest(repository, signature_tag(digest))
    if sig is not None:
        signature = _store_manifest(layout, client, repository, sig[0], sig[1] or MEDIA_MANIFEST)
    return referrers, signature


def _referrer(stored: Descriptor, kind: str, subject: str, artifact: str | None) -> Descriptor:
    return Descriptor(
        MEDIA_MANIFEST,
        stored.digest,
        stored.size,
        annotations=((KIND, kind), (SUBJECT, subject)),
        artifact_type=artifact,
    )


def _fetch_manifest(layout: Layout, client: Client, repository: str, digest: str) -> Descriptor:
    found = client.manifest(repository, digest)  # checked against the digest
    if found is None:
        raise KilnError(f"the registry lists {digest} in {repository} but has no such manifest")
    return _store_manifest(layout, client, repository, found[0], MEDIA_MANIFEST)


def _store_manifest(
    layout: Layout, client: Client, repository: str, data: bytes, media_type: str
) -> Descriptor:
    try:
        blobs = blobs_of(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
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
        referrers.append(_referrer(descriptor, kind, digest, entry.get("artifactType")))
    signature = source.tagged(signature_tag(digest))
    if signature is not None:
        signature = _copy_manifest(source, dest, signature.digest, signature.media_type)
    return referrers, signature


def read_verified(layout: Layout, digest: str) -> bytes:
    """A blob of a layout kiln did not write, checked (see :func:`_verified`)."""
    return _verified(layout, digest)


def _copy_manifest(source: Layout, dest: Layout, digest: str, media_type: str) -> Descriptor:
    data = _verified(source, digest)
    for blob in blobs_of(json.loads(data)):
        dest.put_bytes(_verified(source, blob.digest), blob.media_type)
    return dest.put_bytes(data, media_type)


def _verified(layout: Layout, digest: str) -> bytes:
    """A blob of a layout kiln did not write: a regular file (no symlink, FIFO or device
    followed) of at most :data:`MAX_FOREIGN` bytes, hashing to its name."""
    path = layout.blob_path(digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KilnError(
            f"cannot read the blob {digest} in {layout.blobs}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FOREIGN:
            raise KilnError(
                f"the blob {digest} in {layout.blobs} is not a regular file of at most "
                f"{MAX_FOREIGN >> 20} MiB: refused"
            )
        data = handle.read(MAX_FOREIGN + 1)
    if digest_of(data) != digest:
        raise KilnError(f"the blob {digest} in {layout.blobs} is corrupt: refused")
    return data
