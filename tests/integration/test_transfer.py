"""kiln push and kiln pull through a real registry (Debian's docker-registry on loopback,
which has no referrers API: the tag schema carries the attachments) and OCI folders.

One copy of the session store is the pushing host (it signs web:1); each test pulls into
a fresh KILN_HOME, the other host.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.registry import serving
from tests.integration.conftest import Kiln, copy_home
from tests.tamper import flip_byte

with warnings.catch_warnings():  # the standard library's bcrypt, for the registry's logins
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

CERTS = Path("/etc/containers/certs.d")  # where skopeo and kiln find a registry's CA


@pytest.fixture(scope="module")
def host_a(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> tuple[Kiln, Path]:
    """A copy of the session store with web:1 signed, and the public key that verifies it."""
    a = copy_home(baked, tmp_path_factory.mktemp("host-a") / "home")
    keys = a.home.parent / "keys"
    keys.mkdir(mode=0o700)
    made = a.json("key", "generate", "--output", str(keys / "release"), "--no-password")
    a.run("sign", "web:1", "--key", made["private_key"])
    return a, Path(made["public_key"])


def test_push_then_pull_keeps_the_digest_the_signature_and_the_attachments(
    host_a: tuple[Kiln, Path], registry: str, fresh: Kiln, tmp_path: Path
) -> None:
    a, public = host_a
    web = a.json("inspect", "web:1")
    pushed = a.json("push", "web:1", f"docker://{registry}/team/web", "--insecure")
    assert [p["ref"] for p in pushed] == ["base:1", "web:1"], "the parent goes first"
    assert pushed[1]["to"] == f"docker://{registry}/team/web@{web['digest']}"
    assert {"provenance", "sbom", "lock", "inventory", "signature"} <= set(pushed[1]["attachments"])
    assert a.json("where", "web:1") is not None

    got = fresh.json("pull", f"docker://{registry}/team/web:1", "--insecure")
    assert (got["ref"], got["digest"], got["recorded"]) == ("web:1", web["digest"], "new")
    assert got["parents"] == ["base:1"]
    assert [n["ref"] for n in fresh.json("lineage", "web:1")["ancestors"]] == ["base:1"]
    # the signature verifies here, and what hangs off the image came along
    verified = fresh.json("verify", "web:1", "--key", str(public))
    assert verified["ok"], verified
    assert fresh.json("inspect", "web:1", "--sbom")["components"]
    provenance = fresh.json("inspect", "web:1", "--provenance")
    assert provenance["subject"][0]["digest"]["sha256"] == web["digest"].split(":", 1)[1]
    kinds = {artefact["kind"] for artefact in fresh.json("inspect", "web:1")["artefacts"]}
    assert {"provenance", "sbom", "lock"} <= kinds
    assert fresh.json("inspect", "web:1")["packages"] == web["packages"]
    assert fresh.json("fsck")["ok"]
    # pulled again: nothing changes
    again = fresh.json("pull", f"docker://{registry}/team/web:1", "--insecure")
    assert again["recorded"] == "present"
    assert [i["ref"] for i in fresh.json("images")] == ["base:1", "web:1"]


def test_a_policy_that_requires_signatures_is_applied_to_what_is_pulled(
    host_a: tuple[Kiln, Path], registry: str, tmp_path: Path
) -> None:
    a, public = host_a
    a.run("push", "web:1", f"docker://{registry}/team/web", "--insecure")
    policy = f'[trust]\nkeys = ["{public}"]\nrequire_signatures = true\n'
    strict = [Kiln(tmp_path / name / "home") for name in ("one", "two")]
    for kiln in strict:
        kiln.home.mkdir(parents=True)
        (kiln.home / "kiln.toml").write_text(policy)
    # web:1 is signed (its unsigned parent comes along as lineage; running it is checked then)
    strict[0].run("pull", f"docker://{registry}/team/web:1", "--insecure")
    untrusted = strict[1].run("pull", f"docker://{registry}/team/base:1", "--insecure", check=False)
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr, untrusted.stderr
    assert strict[1].json("images") == [], "nothing is recorded from an untrusted pull"


def test_a_revoked_digest_is_refused(host_a: tuple[Kiln, Path], registry: str, fresh: Kiln) -> None:
    a, _public = host_a
    a.run("push", "tiny:1", f"docker://{registry}/tiny", "--insecure")
    fresh.run("pull", f"docker://{registry}/tiny:1", "--insecure")
    fresh.run("revoke", "tiny:1", "--reason", "test")
    refused = fresh.run("pull", f"docker://{registry}/tiny:1", "--insecure", check=False)
    assert refused.returncode == 1 and "revoked" in refused.stderr, refused.stderr


def test_a_tampered_blob_in_the_registry_is_refused(
    host_a: tuple[Kiln, Path], registry: str, fresh: Kiln, tmp_path: Path
) -> None:
    a, _public = host_a
    a.run("push", "tiny:1", f"docker://{registry}/tiny", "--insecure")
    layer = a.json("inspect", "tiny:1")["layers"][0]["digest"].split(":", 1)[1]
    data = tmp_path / "registry" / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    flip_byte(data, 100)
    refused = fresh.run("pull", f"docker://{registry}/tiny:1", "--insecure", check=False)
    assert refused.returncode == 1, refused.stderr
    assert fresh.json("images") == []
    assert fresh.json("fsck")["ok"]


def test_all_channels_pushes_what_each_channel_points_at_under_its_name(
    host_a: tuple[Kiln, Path], registry: str, fresh: Kiln
) -> None:
    a, _public = host_a
    a.run("promote", "tiny:1", "edge")
    pushed = a.json("push", "--all-channels", "tiny", f"docker://{registry}/tiny", "--insecure")
    assert [(p["ref"], p["tags"]) for p in pushed] == [("tiny:1", ["1", "edge"])]
    got = fresh.json("pull", f"docker://{registry}/tiny:edge", "--insecure")
    assert (got["ref"], got["digest"]) == ("tiny:1", pushed[0]["digest"])
    refused = a.run("push", "--all-channels", "tiny:1", f"docker://{registry}/t", check=False)
    assert refused.returncode == 2, refused.stderr


def test_an_oci_folder_round_trip_under_another_name(
    host_a: tuple[Kiln, Path], fresh: Kiln, tmp_path: Path
) -> None:
    a, public = host_a
    folder = tmp_path / "out"
    pushed = a.json("push", "web:1", f"oci:{folder}:web")
    assert pushed[-1]["to"] == f"oci:{folder}:web"
    got = fresh.json("pull", f"oci:{folder}:web", "--as", "frontend")
    assert got["ref"] == "frontend:1" and got["parents"] == ["base:1"]
    assert fresh.json("verify", "frontend:1", "--key", str(public))["ok"]


def test_bad_locations_are_exit_2(fresh: Kiln) -> None:
    for bad in ("web:1", "docker://", "docker://host", "docker://HOST/Web:1", "oci:"):
        result = fresh.run("push", "tiny:1", bad, check=False)
        assert result.returncode == 2, (bad, result.stderr)
    remote = fresh.run("pull", "docker://example.org/x:1", "--insecure", check=False)
    assert remote.returncode == 2 and "loopback" in remote.stderr, remote.stderr


def _certificates(folder: Path) -> tuple[Path, Path, bytes]:
    """A CA of the test's own and a certificate it signed for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("kiln test CA"))
        .issuer_name(name("kiln test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "registry.crt", folder / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM)


def test_a_registry_with_tls_and_a_login(
    host_a: tuple[Kiln, Path], fresh: Kiln, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _public = host_a
    cert, key, ca = _certificates(tmp_path)
    logins = tmp_path / "htpasswd"
    logins.write_text(f"kiln:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    with serving(tmp_path / "tls", tls=(cert, key), htpasswd=logins) as address:
        trusted = CERTS / address  # a folder of this test's own port, removed after
        trusted.mkdir(parents=True)
        try:
            (trusted / "ca.crt").write_bytes(ca)
            refused = a.run("push", "tiny:1", f"docker://{address}/tiny", check=False)
            assert refused.returncode == 1 and "skopeo login" in refused.stderr, refused.stderr
            auth = tmp_path / "auth.json"
            login = base64.b64encode(b"kiln:s3cret").decode()
            auth.write_text(json.dumps({"auths": {address: {"auth": login}}}))
            monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
            pushed = a.json("push", "tiny:1", f"docker://{address}/tiny")  # TLS, verified
            assert "provenance" in pushed[-1]["attachments"]
            got = fresh.json("pull", f"docker://{address}/tiny:1")
            assert (got["recorded"], got["digest"]) == ("new", pushed[-1]["digest"])
        finally:
            shutil.rmtree(trusted)
