"""Keys, signatures and trust: `kiln key generate`, `kiln sign`, `kiln verify`, and the
trust check `kiln run` and `kiln start` make before a machine boots.

A key pair is ECDSA P-256 (cosign's scheme); its private half is an encrypted PKCS#8 PEM
file, mode 0600. By default it lives in ``$KILN_HOME/keys/`` (``kiln.key`` beside
``kiln.pub``), which is where ``kiln sign`` looks for it without ``--key``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiln.actor import actor
from kiln.app import resolve
from kiln.app.workspace import Workspace
from kiln.atomic import write_atomic
from kiln.catalog.lookup import ImageRow
from kiln.errors import BadInput
from kiln.home import Home
from kiln.lifecycle import trust

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def default_prefix(home: Home) -> Path:
    """Where ``kiln key generate`` writes and ``kiln sign`` reads without a path."""
    return home.root / "keys" / "kiln"


def default_key(home: Home) -> Path:
    return default_prefix(home).with_suffix(PRIVATE_SUFFIX)


@dataclass(frozen=True)
class KeyMade:
    private_key: Path
    public_key: Path
    key_id: str
    encrypted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "private_key": str(self.private_key),
            "public_key": str(self.public_key),
            "key_id": self.key_id,
            "encrypted": self.encrypted,
        }


def generate_key(
    workspace: Workspace, prefix: Path | None, password: bytes | None, force: bool = False
) -> KeyMade:
    """Write PREFIX.key (encrypted with ``password``; None only for --no-password) and
    PREFIX.pub, each atomically; an existing file is kept unless ``force``. A folder
    that is not there is made only when it is kiln's own (``$KILN_HOME/keys``)."""
    from kiln.lifecycle import signing

    own = default_prefix(workspace.home).parent.absolute()  # kiln's own folder: made here
    prefix = (prefix or default_prefix(workspace.home)).absolute()
    private = prefix.with_name(prefix.name + PRIVATE_SUFFIX)
    public = prefix.with_name(prefix.name + PUBLIC_SUFFIX)
    existing = [str(path) for path in (private, public) if os.path.lexists(path)]
    if existing and not force:
        raise BadInput(
            f"refusing to overwrite {' and '.join(existing)}",
            hint="give another --output PREFIX, or --force to replace the key pair",
        )
    if password is not None and not password:
        raise BadInput("an empty password: give one, or --no-password for an unencrypted key")
    if not prefix.parent.is_dir():
        if prefix.parent != own:  # a folder named by hand is the caller's to make
            raise BadInput(
                f"the folder {prefix.parent} of --output {prefix} does not exist",
                hint=f"make it first (mkdir -m 700 {prefix.parent}), or name another PREFIX",
            )
        prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = signing.generate(password)
    # the temp file is 0600 from its creation (mkstemp), so the key is never readable
    write_atomic(private, pair.private_pem, mode=0o600)
    write_atomic(public, pair.public_pem, mode=0o644)
    return KeyMade(private, public, pair.key_id, password is not None)


@dataclass(frozen=True)
class SignedImage:
    ref: str
    digest: str
    key_id: str
    key: Path
    tag: str
    signature_manifest: str
    payload: str
    signatures: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "key_id": self.key_id,
            "key": str(self.key),
            "tag": self.tag,
            "signature_manifest": self.signature_manifest,
            "payload": self.payload,
            "signatures": self.signatures,
        }


def sign_image(
    workspace: Workspace, ref: str, key: Path | None, password: bytes | None
) -> SignedImage:
    """Sign the manifest digest ``ref`` names, in the store beside the image (cosign's
    ``sha256-<hex>.sig`` tag), then record the signature and a ``signed`` event in one
    catalog transaction. An image whose stored bytes are not its digest's is refused:
    a signature says those bytes are the ones meant."""
    from kiln.catalog import events
    from kiln.catalog.lifecycle import Signature
    from kiln.lifecycle import signing
    from kiln.store.gc import store_in_use
    from kiln.store.layout import MEDIA_MANIFEST, Descriptor

    key = (key or default_key(workspace.home)).absolute()
    private = signing.load_private_key(key, password)
    row = resolve.image(workspace, ref)
    layout = workspace.layout
    damage = signing.check_image(layout, row.digest)
    if damage:
        raise signing.Untrusted(
            f"refusing to sign {row.ref}: its stored bytes are not {row.digest}\n"
            + "\n".join(f"  {problem}" for problem in damage),
            hint="'kiln fsck' checks the store; rebake the image, or restore its blobs",
        )
    subject = Descriptor(MEDIA_MANIFEST, row.digest, layout.blob_path(row.digest).stat().st_size)
    with store_in_use(workspace.home):  # gc keeps the new blobs until the tag names them
        signed = signing.sign(layout, subject, row.name, private, {"ref": row.ref})
    with workspace.catalog.session() as session:
        session.add(
            Signature(
                image_id=row.id,
                digest=row.digest,
                key_id=signed.key_id,
                signature_manifest=signed.manifest.digest,
                created=datetime.now(UTC),
                actor=actor(),
            )
        )
        events.record(
            session,
            "signed",
            row.name,
            row.version,
            row.digest,
            key_id=signed.key_id,
            signature_manifest=signed.manifest.digest,
            payload=signed.payload.digest,
        )
    return SignedImage(
        row.ref,
        row.digest,
        signed.key_id,
        key,
        signed.tag,
        signed.manifest.digest,
        signed.payload.digest,
        signed.signatures,
    )


@dataclass(frozen=True)
class Verification:
    ref: str
    digest: str
    ok: bool
    key_ids: tuple[str, ...]
    problems: tuple[str, ...]
    keys: tuple[Path, ...]  # the trusted keys it was checked against
    policy: dict[str, str | None] | None  # the policy the keys came from, if they did

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "ok": self.ok,
            "key_ids": list(self.key_ids),
            "problems": list(self.problems),
            "keys": [str(key) for key in self.keys],
            "policy": self.policy,
        }


def verify_image(
    workspace: Workspace, ref: str, keys: tuple[Path, ...] = (), policy_file: Path | None = None
) -> Verification:
    """Check ``ref`` against ``keys``, else the policy's ``[trust] keys``: a valid
    signature by one of them over this digest, and the image's bytes intact."""
    from kiln.lifecycle import policy as policies
    from kiln.lifecycle import signing

    row = resolve.image(workspace, ref)
    described = None
    trusted = tuple(key.absolute() for key in keys)
    if not trusted:
        policy = policies.find(workspace.home, policy_file)
        trusted = tuple(policy.key_paths())
        described = policy.describe()
    found = signing.verify(workspace.layout, row.digest, trusted)
    return Verification(
        row.ref, row.digest, found.ok, found.key_ids, found.problems, trusted, described
    )


def enforce_trust(workspace: Workspace, row: ImageRow) -> None:
    """Refuse to boot ``row`` if the policy in force requires signatures and the image
    does not meet it (kiln.lifecycle.signing.Untrusted, exit 1). With no such policy
    this reads at most the policy file, and imports nothing more."""
    trust.enforce(workspace.home, workspace.layout, row.digest, row.ref)
