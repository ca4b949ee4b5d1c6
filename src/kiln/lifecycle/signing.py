"""Image signatures in cosign's layout, made and checked with pyca/cryptography.

cosign (sigstore/cosign ``specs/SIGNATURE_SPEC.md``) signs an image's manifest digest
through two hops: ``Sign(sha256(payload))``, where the payload is a "simple signing" JSON
document naming the digest. The payload is a blob; the signature manifest (an OCI image
manifest tagged ``sha256-<hex>.sig`` beside the image) lists each payload as a layer of
media type ``application/vnd.dev.cosign.simplesigning.v1+json``, with the base64 ASN.1 DER
ECDSA P-256 signature in the layer's ``dev.cosignproject.cosign/signature`` annotation.
A second signature on the same image is one more layer of the same manifest, as cosign
does it. So ``skopeo copy oci:$KILN_HOME/oci:sha256-<hex>.sig`` carries kiln's
signatures to a registry, where cosign finds them by its tag rule.

Beyond cosign's layout: each layer names the key that made it (``org.kiln.key-id``,
unsigned, a hint only: it lets a failure say "unknown key" rather than "bad signature"),
and the manifest names the image as its OCI 1.1 ``subject``, so gc drops the signatures
with the image and fsck checks them like any artefact.

A signature is worth nothing over bytes that are not the signed ones: :func:`verify`
checks the image itself too (manifest, config and every layer blob hashed as it streams).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import __version__
from kiln.errors import BadInput, KilnError
from kiln.store.artefacts import KIND, SUBJECT
from kiln.store.layout import (
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    Descriptor,
    Layout,
    signature_tag,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import (
        EllipticCurvePrivateKey,
        EllipticCurvePublicKey,
    )

MEDIA_PAYLOAD = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
KEY_ID_ANNOTATION = "org.kiln.key-id"
PAYLOAD_TYPE = "cosign container image signature"
SIGNATURE_KIND = "signature"  # the index entry's org.kiln.artefact
MAX_PAYLOAD_BYTES = 64 << 10  # a simple-signing payload is a few hundred bytes
MAX_SIGNATURES = 1000
MAX_KEY_BYTES = 64 << 10


class KeyFileError(BadInput):
    """A key file is missing, unreadable, not a PEM key kiln signs with, or locked."""


class Untrusted(KilnError):
    """An image has no valid signature by a trusted key, or its bytes are not the signed
    ones (exit 1)."""


@dataclass(frozen=True)
class Verified:
    ok: bool
    key_ids: tuple[str, ...]  # trusted keys with a valid signature over this digest
    problems: tuple[str, ...]  # why not, in words

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "key_ids": list(self.key_ids), "problems": list(self.problems)}


@dataclass(frozen=True)
class Signed:
    """One signature added: the .sig manifest that now holds it, and which layer it is."""

    digest: str  # the signed image manifest
    key_id: str
    tag: str  # sha256-<hex>.sig
    manifest: Descriptor  # the signature manifest after this signature was added
    payload: Descriptor
    signatures: int  # how many the manifest holds now


# keys


def key_id(public_key: EllipticCurvePublicKey) -> str:
    """``sha256:`` + sha256 of the key's DER SubjectPublicKeyInfo: the same id for the
    same key wherever its PEM came from."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc.strerror}",
            hint="make one with 'kiln key generate', or give the right path with --key",
        ) from None
    if len(data) > MAX_KEY_BYTES:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_BYTES} bytes: not a key")
    return data


def _p256(key: object, path: Path, kind: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    base = ec.EllipticCurvePublicKey if kind == "public" else ec.EllipticCurvePrivateKey
    if not isinstance(key, base) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(
            f"{path} is not an ECDSA P-256 {kind} key (cosign's scheme, the one kiln uses)",
            hint="make one with 'kiln key generate'",
        )


def load_public_key(path: Path) -> EllipticCurvePublicKey:
    """A PEM public key (SubjectPublicKeyInfo), as ``kiln key generate`` and cosign write."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(
            f"{path} is not a PEM public key",
            hint="give the .pub file that 'kiln key generate' wrote",
        ) from None
    _p256(key, path, "public")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _not_public(path: Path, data: bytes) -> None:
    """Refuse the public half of a key pair where the private one is needed, naming it."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        return
    private = path.with_suffix(".key")
    named = f" {private}" if path.suffix == ".pub" else " (PREFIX.key beside PREFIX.pub)"
    raise KeyFileError(
        f"{path} is the public half of the key: sign with the private key{named}",
        hint="the public half is for kiln verify --key and the policy's [trust] keys",
    )


def load_private_key(path: Path, password: bytes | None) -> EllipticCurvePrivateKey:
    """A PEM private key (PKCS#8, encrypted unless made with --no-password)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path)
    _not_public(path, data)
    try:
        key = serialization.load_pem_private_key(data, password=password or None)
    except TypeError:  # encrypted without a password, or a password for a plain key
        raise KeyFileError(
            f"{path} is encrypted: kiln needs its password"
            if not password
            else f"{path} is not encrypted, but a password was given",
            hint="set KILN_KEY_PASSWORD" if not password else "unset KILN_KEY_PASSWORD",
        ) from None
    except ValueError:
        raise KeyFileError(
            f"cannot open private key {path}: a wrong password, or not a PEM private key",
            hint="check KILN_KEY_PASSWORD and the --key path",
        ) from None
    _p256(key, path, "private")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes
    key_id: str


def generate(password: bytes | None) -> KeyPair:
    """A new ECDSA P-256 key pair: the private key as PKCS#8 PEM (encrypted with
    ``password``; None only for an explicit --no-password), the public key as SPKI PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(private_pem, public_pem, key_id(public))


# signing


def payload(reference: str, digest: str, optional: dict[str, Any] | None = None) -> bytes:
    """The simple-signing payload for manifest ``digest`` (cosign ignores the reference).

    Sorted keys without spaces: Go's encoding of cosign's own struct gives these bytes."""
    document = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": optional,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _signature_entry(layout: Layout, digest: str) -> Descriptor | None:
    return layout.tagged(signature_tag(digest))


def sign(
    layout: Layout,
    subject: Descriptor,
    reference: str,
    private_key: EllipticCurvePrivateKey,
    optional: dict[str, Any] | None = None,
) -> Signed:
    """Sign image manifest ``subject``: store the payload, add it as a layer to the
    image's ``sha256-<hex>.sig`` manifest and retag it. Hold the store in use around this
    (kiln.store.gc.store_in_use), so gc cannot take the new blobs before the tag."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    claims = {"creator": f"kiln {__version__}", "timestamp": int(time.time())}
    data = payload(reference, subject.digest, {**claims, **(optional or {})})
    signature = private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    signer = key_id(private_key.public_key())
    stored = layout.put_bytes(data, MEDIA_PAYLOAD)
    layer = Descriptor(
        MEDIA_PAYLOAD,
        stored.digest,
        stored.size,
        annotations=(
            (SIGNATURE_ANNOTATION, base64.b64encode(signature).decode()),
            (KEY_ID_ANNOTATION, signer),
        ),
    )
    count = 0

    def amend(current: Descriptor | None) -> Descriptor:
        nonlocal count
        layers: list[dict[str, Any]] = []
        if current is not None:
            layers = list(layout.read_json(current.digest).get("layers") or [])
        layers.append(layer.to_json())
        count = len(layers)
        return layout.put_json(signature_manifest(subject, layers, layout), MEDIA_MANIFEST)

    tag = signature_tag(subject.digest)
    manifest = layout.retag(tag, amend, {KIND: SIGNATURE_KIND, SUBJECT: subject.digest})
    return Signed(subject.digest, signer, tag, manifest, stored, count)


def signature_manifest(
    subject: Descriptor, layers: list[dict[str, Any]], layout: Layout
) -> dict[str, Any]:
    """The .sig manifest for ``layers``: cosign's config (an image config whose diff_ids
    are the payloads, as cosign's Go library writes it for an image of JSON layers)."""
    config = {
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    stored = layout.put_json(config, MEDIA_CONFIG)
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": stored.to_json(),
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
    }


# verifying


def _hash_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a blob, streamed (a layer may be gigabytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return "sha256:" + digest, size


def _blob_problem(layout: Layout, what: str, descriptor: dict[str, Any]) -> str | None:
    """Why the blob a descriptor names is not that blob, or None when it is."""
    digest = descriptor.get("digest")
    size = descriptor.get("size")
    if not isinstance(digest, str) or not isinstance(size, int):
        return f"tampered {what}: its descriptor has no digest or size"
    try:
        actual, actual_size = _hash_file(layout.blob_path(digest))
    except KilnError:
        return f"tampered {what}: {digest!r} is not a sha256 digest"
    except FileNotFoundError:
        return f"tampered {what}: blob {digest} is missing"
    except OSError as exc:
        return f"tampered {what}: blob {digest} cannot be read: {exc.strerror}"
    if actual != digest:
        return f"tampered {what}: blob {digest} hashes to {actual}"
    if actual_size != size:
        return f"tampered {what}: blob {digest} is {actual_size} bytes, its descriptor says {size}"
    return None


def check_image(layout: Layout, digest: str) -> list[str]:
    """Whether the stored image is the one ``digest`` names: the manifest hashes to it,
    the config and every layer blob to their descriptors (each hashed as it streams)."""
    try:
        raw = layout.blob_path(digest).read_bytes()
    except KilnError:
        return [f"tampered manifest: {digest!r} is not a sha256 digest"]
    except FileNotFoundError:
        return [f"tampered manifest: blob {digest} is missing"]
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if actual != digest:
        return [f"tampered manifest: blob {digest} hashes to {actual}"]
    try:
        manifest = json.loads(raw)
        config = manifest["config"]
        layers = list(manifest["layers"])
    except (ValueError, KeyError, TypeError):
        return [f"tampered manifest: {digest} is not an image manifest"]
    problems = []
    if problem := _blob_problem(layout, "config", config):
        problems.append(problem)
    for number, layer in enumerate(layers):
        if problem := _blob_problem(layout, f"layer {number}", layer):
            problems.append(problem)
    return problems


def _trusted_keys(trusted: Sequence[Path]) -> dict[str, EllipticCurvePublicKey]:
    keys = {}
    for path in trusted:
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def _signature_layers(layout: Layout, digest: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The payload layers of the image's .sig manifest, checked against its own digest."""
    entry = _signature_entry(layout, digest)
    if entry is None:
        return [], [f"no signature: nothing is tagged {signature_tag(digest)}"]
    problem = _blob_problem(layout, "signature manifest", entry.to_json())
    if problem:
        return [], [problem]
    try:
        layers = list(layout.read_json(entry.digest)["layers"])
    except (ValueError, KeyError, TypeError):
        return [], [f"no signature: {entry.digest} is not a signature manifest"]
    layers = [
        layer
        for layer in layers
        if isinstance(layer, dict) and layer.get("mediaType") == MEDIA_PAYLOAD
    ]
    if not layers:
        return [], [f"no signature: {signature_tag(digest)} holds no simple-signing payload"]
    return layers[:MAX_SIGNATURES], []


def _check_signature(
    layout: Layout,
    digest: str,
    number: int,
    layer: dict[str, Any],
    keys: dict[str, EllipticCurvePublicKey],
) -> tuple[str | None, str | None]:
    """(the trusted key whose valid signature this layer is, or the problem with it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    what = f"signature {number}"
    annotations = layer.get("annotations") or {}
    claimed = annotations.get(KEY_ID_ANNOTATION)
    by = f" (by {claimed})" if isinstance(claimed, str) else ""
    if isinstance(layer.get("size"), int) and layer["size"] > MAX_PAYLOAD_BYTES:
        return None, f"{what}{by}: payload of {layer['size']} bytes is not a simple-signing one"
    if problem := _blob_problem(layout, f"{what} payload", layer):
        return None, problem
    try:
        signature = base64.b64decode(annotations.get(SIGNATURE_ANNOTATION) or "", validate=True)
    except ValueError:
        signature = b""
    if not signature:
        return None, f"bad signature: {what}{by} has no base64 {SIGNATURE_ANNOTATION} annotation"
    data = layout.read_bytes(layer["digest"])
    signer = None
    order = sorted(keys, key=lambda kid: kid != claimed)  # the claimed key first
    for kid in order:
        try:
            keys[kid].verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        signer = kid
        break
    if signer is None:
        if isinstance(claimed, str) and claimed not in keys:
            return None, f"unknown key: {what} is by {claimed}, which is not a trusted key"
        if isinstance(claimed, str):
            return None, f"bad signature: {what} does not verify with trusted key {claimed}"
        return None, f"unknown key or bad signature: no trusted key verifies {what}"
    try:
        critical = json.loads(data)["critical"]
        named = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError):
        return None, f"bad signature: {what} by {signer} signs a payload that is not simple signing"
    if kind != PAYLOAD_TYPE:
        return None, f"bad signature: {what} by {signer} is of type {kind!r}, not {PAYLOAD_TYPE!r}"
    if named != digest:
        return None, f"payload for another digest: {what} by {signer} signs {named}, not {digest}"
    return signer, None


def verify(layout: Layout, digest: str, trusted: Sequence[Path]) -> Verified:
    """Whether image manifest ``digest`` carries a valid signature by one of the
    ``trusted`` PEM public keys over a payload naming ``digest``, and its stored bytes
    (manifest, config, every layer) are the ones that digest names.

    A key file that cannot be read or is not a P-256 public key is bad input
    (:class:`KeyFileError`, exit 2), not a failed verification.
    """
    keys = _trusted_keys(trusted)
    damage = check_image(layout, digest)
    problems = list(damage)
    layers, missing = _signature_layers(layout, digest)
    problems += missing
    if not keys:  # every signature would be by an unknown key: say why once
        problems.append("no trusted key: give --key, or list keys in the policy's [trust]")
        layers = []
    signers: list[str] = []
    for number, layer in enumerate(layers):
        signer, problem = _check_signature(layout, digest, number, layer, keys)
        if signer is not None and signer not in signers:
            signers.append(signer)
        if problem:
            problems.append(problem)
    ok = bool(signers) and not damage
    return Verified(ok, tuple(signers), () if ok else tuple(problems))
