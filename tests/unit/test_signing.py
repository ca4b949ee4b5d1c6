"""Signatures: kiln writes cosign's layout (checked against a fixture written from
cosign's SIGNATURE_SPEC.md, and verified by plain pyca/cryptography code written here from
that spec, not by kiln's verify), verify names every way an image can fail it, and the
trust policy's check on the clock reads nothing without a policy file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlalchemy import select

from kiln.app import signing as use
from kiln.app.workspace import Workspace
from kiln.catalog import Image
from kiln.catalog.lifecycle import Event, Signature
from kiln.errors import BadInput
from kiln.home import Home
from kiln.lifecycle import policy, signing, trust
from kiln.lifecycle.policyfile import locate
from kiln.store import gc
from kiln.store.layout import (
    MEDIA_MANIFEST,
    REF_ANNOTATION,
    Descriptor,
    Layout,
    signature_tag,
)
from tests.unit.lifecycle_rows import manifest, workspace

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "cosign-simple-signing.json").read_text()
)
__all__ = ["workspace"]  # the fixture
PASSWORD = b"correct horse"


def make_image(workspace: Workspace, name: str, content: bytes) -> Descriptor:
    """An image of one layer in the store and the catalog, as a bake leaves it."""
    found, config = manifest(workspace, content)
    workspace.layout.tag(f"{name}:1", found)
    with workspace.catalog.session() as session:
        session.add(
            Image(
                name=name,
                version=1,
                digest=found.digest,
                config_digest=config.digest,
                cache_key=hashlib.sha256(content).hexdigest(),
                recipe_path="",
                recipe_digest="",
                origin="scratch",
                created=datetime.now(UTC),
                status="ok",
                size=0,
                seconds=0.0,
            )
        )
    return found


def key_pair(workspace: Workspace, name: str) -> tuple[Path, Path]:
    made = use.generate_key(workspace, workspace.home.root / name, PASSWORD)
    return made.private_key, made.public_key


def blob(layout: Layout, digest: str) -> Path:
    return layout.blob_path(digest)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# cosign's layout


def test_the_payload_is_cosigns_simple_signing_bytes() -> None:
    for case in (FIXTURE["payload"], FIXTURE["payload_without_optional"]):
        data = signing.payload(case["reference"], case["digest"], case.get("optional"))
        assert data == case["bytes"].encode()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == case["blob"]["digest"]
        assert len(data) == case["blob"]["size"]
    assert json.loads(FIXTURE["payload"]["bytes"]) == FIXTURE["payload"]["document"]


def test_the_signature_tag_follows_cosigns_rule() -> None:
    rule = FIXTURE["tag_rule"]
    assert signature_tag(rule["digest"]) == rule["tag"]


def test_a_kiln_signature_is_cosigns_layout_and_verifies_by_the_spec(
    workspace: Workspace,
) -> None:
    image = make_image(workspace, "tiny", b"hello from kiln\n")
    private, public = key_pair(workspace, "release")
    signed = use.sign_image(workspace, "tiny", private, PASSWORD)

    # tag-based discovery: sha256-<hex>.sig in index.json
    layout_root = workspace.home.oci
    index = json.loads((layout_root / "index.json").read_bytes())
    tag = signature_tag(image.digest)
    [entry] = [e for e in index["manifests"] if e["annotations"][REF_ANNOTATION] == tag]
    assert entry["mediaType"] == FIXTURE["signature_manifest"]["mediaType"]
    blobs = layout_root / "blobs" / "sha256"

    def read(digest: str) -> bytes:
        data = (blobs / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    manifest = json.loads(read(entry["digest"]))
    want = FIXTURE["signature_manifest"]
    assert manifest["schemaVersion"] == want["schemaVersion"]
    assert manifest["mediaType"] == want["mediaType"]
    assert manifest["config"]["mediaType"] == want["config"]["mediaType"]
    config = json.loads(read(manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    [layer] = manifest["layers"]
    assert layer["mediaType"] == want["layers"][0]["mediaType"]
    assert set(want["layers"][0]["annotations"]) <= set(layer["annotations"])

    # the payload names this image; the signature is base64 DER ECDSA P-256 over it
    payload = read(layer["digest"])
    assert len(payload) == layer["size"]
    document = json.loads(payload)
    assert document.keys() == FIXTURE["payload"]["document"].keys()
    critical = document["critical"]
    assert critical["type"] == "cosign container image signature"
    assert critical["image"]["docker-manifest-digest"] == image.digest
    assert critical["identity"] == {"docker-reference": "tiny"}
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    decode_dss_signature(signature)  # ASN.1 DER, as the spec's example is
    decode_dss_signature(base64.b64decode(FIXTURE["signature_example"]))
    key = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(signature, payload.replace(b"tiny", b"tinx"), ec.ECDSA(hashes.SHA256()))
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signed.key_id == "sha256:" + hashlib.sha256(der).hexdigest()
    assert manifest["subject"]["digest"] == image.digest


def test_a_second_signature_is_a_second_layer_of_the_same_manifest(
    workspace: Workspace,
) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    first, first_pub = key_pair(workspace, "one")
    second, second_pub = key_pair(workspace, "two")
    one = use.sign_image(workspace, "tiny:1", first, PASSWORD)
    two = use.sign_image(workspace, f"tiny@{image.digest}", second, PASSWORD)
    assert (one.signatures, two.signatures) == (1, 2)
    tag = signature_tag(image.digest)
    entries = [
        e
        for e in workspace.layout.read_index()["manifests"]
        if (e.get("annotations") or {}).get(REF_ANNOTATION) == tag
    ]
    assert [e["digest"] for e in entries] == [two.signature_manifest]
    both = signing.verify(workspace.layout, image.digest, [first_pub, second_pub])
    assert both.ok and set(both.key_ids) == {one.key_id, two.key_id}
    assert signing.verify(workspace.layout, image.digest, [second_pub]).key_ids == (two.key_id,)
    assert "tiny:1" in workspace.layout.refs() and tag not in workspace.layout.refs()


def test_signers_at_once_each_keep_their_signature(workspace: Workspace) -> None:
    """The .sig manifest is rewritten under the index lock: none of them is lost."""
    image = make_image(workspace, "tiny", b"hello\n")
    layout = Layout(workspace.home.oci, tmp=workspace.home.tmp)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(6)]
    with ThreadPoolExecutor(len(keys)) as pool:
        done = list(pool.map(lambda key: signing.sign(layout, image, "tiny", key), keys))
    assert sorted(signed.signatures for signed in done) == list(range(1, len(keys) + 1))
    publics = []
    for number, key in enumerate(keys):
        path = workspace.home.root / f"{number}.pub"
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        publics.append(path)
    found = signing.verify(layout, image.digest, publics)
    assert found.ok and len(found.key_ids) == len(keys)


def test_signing_records_a_row_and_an_event_together(workspace: Workspace) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    private, _public = key_pair(workspace, "release")
    signed = use.sign_image(workspace, "tiny", private, PASSWORD)
    with workspace.catalog.reading() as session:
        [row] = session.scalars(select(Signature)).all()
        [event] = session.scalars(select(Event).where(Event.kind == "signed")).all()
    assert (row.digest, row.key_id, row.signature_manifest) == (
        image.digest,
        signed.key_id,
        signed.signature_manifest,
    )
    assert (event.name, event.version, event.digest) == ("tiny", 1, image.digest)
    assert event.details()["key_id"] == signed.key_id


# verify: every way to fail


def test_verify_names_what_is_wrong(workspace: Workspace) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    other = make_image(workspace, "other", b"other\n")
    private, public = key_pair(workspace, "release")
    _stranger, stranger_pub = key_pair(workspace, "stranger")
    layout = workspace.layout

    unsigned = signing.verify(layout, image.digest, [public])
    assert not unsigned.ok and unsigned.problems[0].startswith("no signature")

    use.sign_image(workspace, "tiny", private, PASSWORD)
    assert signing.verify(layout, image.digest, [public]).ok
    unknown = signing.verify(layout, image.digest, [stranger_pub])
    assert not unknown.ok and unknown.problems[0].startswith("unknown key")
    nobody = signing.verify(layout, image.digest, [])
    assert not nobody.ok and "no trusted key" in nobody.problems[0]

    # the tiny signature copied to the other image's tag: a payload for another digest
    tag_entry = next(
        e
        for e in layout.read_index()["manifests"]
        if (e.get("annotations") or {}).get(REF_ANNOTATION) == signature_tag(image.digest)
    )
    layout.retag(signature_tag(other.digest), lambda _old: Descriptor.from_json(tag_entry))
    moved = signing.verify(layout, other.digest, [public])
    assert not moved.ok and moved.key_ids == ()
    assert moved.problems[0].startswith("payload for another digest: signature 0 by sha256:")

    manifest = json.loads(layout.read_bytes(image.digest))
    for what, digest in (
        ("layer 0", manifest["layers"][0]["digest"]),
        ("config", manifest["config"]["digest"]),
        ("manifest", image.digest),
    ):
        path = blob(layout, digest)
        flip(path, path.stat().st_size // 2)
        found = signing.verify(layout, image.digest, [public])
        assert not found.ok and any(p.startswith(f"tampered {what}") for p in found.problems)
        flip(path, path.stat().st_size // 2)
    assert signing.verify(layout, image.digest, [public]).ok


def test_a_bad_signature_is_told_from_an_unknown_key(workspace: Workspace) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    private, public = key_pair(workspace, "release")
    signed = use.sign_image(workspace, "tiny", private, PASSWORD)
    layout = workspace.layout
    manifest = json.loads(layout.read_bytes(signed.signature_manifest))
    forged = ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
    manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = base64.b64encode(
        forged
    ).decode()
    stored = layout.put_json(manifest, MEDIA_MANIFEST)
    layout.retag(signature_tag(image.digest), lambda _old: stored)
    found = signing.verify(layout, image.digest, [public])
    assert not found.ok
    assert found.problems[0].startswith("bad signature: signature 0 does not verify with")


# keys


def test_keys_are_written_once_private_half_0600_and_encrypted(workspace: Workspace) -> None:
    prefix = workspace.home.root / "keys" / "ci"
    made = use.generate_key(workspace, prefix, PASSWORD)
    assert made.private_key == prefix.with_name("ci.key") and made.encrypted
    assert os.stat(made.private_key).st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in made.private_key.read_bytes()
    assert made.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = made.private_key.read_bytes()
    with pytest.raises(BadInput, match="refusing to overwrite"):
        use.generate_key(workspace, prefix, PASSWORD)
    assert made.private_key.read_bytes() == before
    assert use.generate_key(workspace, prefix, PASSWORD, force=True).key_id != made.key_id
    with pytest.raises(BadInput, match="empty password"):
        use.generate_key(workspace, workspace.home.root / "empty", b"")
    plain = use.generate_key(workspace, workspace.home.root / "plain", None)
    assert not plain.encrypted and b"BEGIN PRIVATE KEY" in plain.private_key.read_bytes()
    with pytest.raises(signing.KeyFileError, match="needs its password"):
        signing.load_private_key(prefix.with_name("ci.key"), None)
    with pytest.raises(signing.KeyFileError, match="wrong password"):
        signing.load_private_key(prefix.with_name("ci.key"), b"wrong")
    with pytest.raises(signing.KeyFileError, match="not a PEM public key"):
        signing.load_public_key(prefix.with_name("ci.key"))


def test_a_prefix_in_a_missing_folder_is_refused_and_nothing_is_made(
    workspace: Workspace, tmp_path: Path
) -> None:
    prefix = tmp_path / "nowhere" / "sub" / "ci"
    with pytest.raises(BadInput, match="does not exist") as caught:
        use.generate_key(workspace, prefix, PASSWORD)
    assert caught.value.exit_code == 2 and str(prefix.parent) in caught.value.message
    assert not (tmp_path / "nowhere").exists()
    made = use.generate_key(workspace, None, PASSWORD)  # the default folder kiln owns
    assert made.private_key == workspace.home.root / "keys" / "kiln.key"


def test_signing_with_the_public_half_names_the_private_one(workspace: Workspace) -> None:
    private, public = key_pair(workspace, "ci")
    with pytest.raises(signing.KeyFileError, match="is the public half of the key") as caught:
        signing.load_private_key(public, PASSWORD)
    assert caught.value.message.endswith(f"sign with the private key {private}")
    assert caught.value.exit_code == 2
    copied = workspace.home.root / "ci.pem"
    copied.write_bytes(public.read_bytes())
    with pytest.raises(signing.KeyFileError, match=r"ci\.pem is the public half"):
        signing.load_private_key(copied, None)


# the trust policy


def write_policy(folder: Path, require: bool, keys: list[Path]) -> Path:
    path = folder / "kiln.toml"
    listed = ", ".join(f'"{key}"' for key in keys)
    path.write_text(f"[trust]\nkeys = [{listed}]\nrequire_signatures = {str(require).lower()}\n")
    return path


def test_trust_finds_the_policy_file_policy_find_does(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = workspace.home
    assert locate(home) is None and policy.find(home).path is None
    write_policy(home.root, True, [])
    assert locate(home) == policy.find(home).path == home.root / "kiln.toml"
    elsewhere = write_policy(tmp_path, False, [])
    monkeypatch.setenv("KILN_POLICY", str(elsewhere))
    assert locate(home) == policy.find(home).path == elsewhere
    assert trust.requiring(home) is None


def test_the_quick_read_of_trust_agrees_with_the_policy_loader(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kiln run reads [trust] without the policy's models: the same keys, and anything
    it does not plainly understand goes to the loader, which says what is wrong."""
    folder = tmp_path / "ops"
    folder.mkdir()
    write_policy(folder, True, [Path("keys/release.pub"), Path("/etc/kiln/other.pub")])
    (tmp_path / "linked.toml").symlink_to(folder / "kiln.toml")
    monkeypatch.setenv("KILN_POLICY", str(tmp_path / "linked.toml"))
    found = trust.requiring(workspace.home)
    assert found is not None
    assert list(found.keys) == policy.load(tmp_path / "linked.toml").key_paths()
    assert found.keys[0] == folder / "keys" / "release.pub"
    for bad in (
        'keys = "release.pub"\nrequire_signatures = true\n',
        "require_signatures = true\nrequire = true\n",
        "require_signatures = true\n[trusted]\n",
        "require_signatures = tru\n",
    ):
        (folder / "kiln.toml").write_text("[trust]\n" + bad)
        with pytest.raises(BadInput):
            trust.requiring(workspace.home)


def test_a_policy_requiring_signatures_refuses_what_it_does_not_trust(
    workspace: Workspace,
) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    private, public = key_pair(workspace, "release")
    _stranger, stranger_pub = key_pair(workspace, "stranger")
    home, layout = workspace.home, workspace.layout
    assert trust.enforce(home, layout, image.digest, "tiny:1") is None  # no policy at all
    write_policy(home.root, False, [public])
    assert trust.enforce(home, layout, image.digest, "tiny:1") is None
    write_policy(home.root, True, [public])
    with pytest.raises(signing.Untrusted, match="no signature"):
        trust.enforce(home, layout, image.digest, "tiny:1")
    use.sign_image(workspace, "tiny", private, PASSWORD)
    decision = trust.enforce(home, layout, image.digest, "tiny:1")
    assert decision is not None and decision.verified.ok
    write_policy(home.root, True, [stranger_pub])
    with pytest.raises(signing.Untrusted, match="unknown key"):
        trust.enforce(home, layout, image.digest, "tiny:1")
    (home.root / "kiln.toml").write_text("[trust]\nrequire_signature = true\n")  # a typo
    with pytest.raises(BadInput, match="policy file has 1 problem"):
        trust.enforce(home, layout, image.digest, "tiny:1")


def test_the_check_on_the_clock_imports_only_what_it_needs(home: Home, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from kiln.app import machines\n"
        "from kiln.app.signing import enforce_trust\n"
        "from kiln.app.workspace import Workspace\n"
        "from kiln.catalog.lookup import ImageRow\n"
        "before = set(sys.modules)\n"
        "row = ImageRow(1, 't', 1, 'sha256:' + '0' * 64, '', '', None, '', '')\n"
        "enforce_trust(Workspace(), row)\n"
        "print(sorted(set(sys.modules) - before))\n"
        "heavy = ('cryptography', 'pydantic', 'kiln.lifecycle.')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        "open('kiln.toml', 'w').write('[trust]\\nkeys = []\\nrequire_signatures = true\\n')\n"
        "from kiln.lifecycle import trust\n"
        "print(trust.requiring(Workspace().home) is not None, 'pydantic' in sys.modules)\n"
    )
    env = {**os.environ, "KILN_HOME": str(home.root)}
    env.pop("KILN_POLICY", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # fleetdefaults: three constants, the network range kiln run falls back to
    loaded = "['kiln.lifecycle.fleetdefaults', 'kiln.lifecycle.policyfile', 'kiln.lifecycle.trust']"
    assert out.stdout.splitlines() == ["[]", loaded, "True False"]


# the store's own checks


def test_gc_drops_the_signatures_of_an_image_it_no_longer_tags(workspace: Workspace) -> None:
    image = make_image(workspace, "tiny", b"hello\n")
    private, _public = key_pair(workspace, "release")
    signed = use.sign_image(workspace, "tiny", private, PASSWORD)
    blobs, _diff_ids, stale = gc.referenced(workspace.layout)
    assert signed.signature_manifest in blobs and signed.payload in blobs and not stale
    workspace.layout.untag("tiny:1")
    _blobs, _diff_ids, stale = gc.referenced(workspace.layout)
    assert [entry["digest"] for entry in stale] == [signed.signature_manifest]
    assert image.digest not in _blobs


def test_the_quick_read_of_trust_knows_every_table_and_key_of_the_policy() -> None:
    """kiln run's plain read of [trust] sends anything unknown to the loader: its lists of
    tables and keys must be the policy model's, or a valid policy would be misread."""
    assert set(policy.PolicyModel.model_fields) == trust.SECTIONS
    assert set(policy.Trust.model_fields) == trust.TRUST_KEYS
