"""A plain ``skopeo copy`` to a real registry and back keeps an image's manifest digest.

kiln stores layers compressed, so skopeo pushes the blobs as they are (it only compresses
uncompressed layers): the digest kiln records is the one the registry serves. The
registry is Debian's docker-registry (the OCI distribution registry) on a loopback port,
with its own config and storage in the test's tmp dir.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.integration.conftest import Kiln


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def test_a_plain_skopeo_copy_to_a_registry_and_back_keeps_the_digest(
    baked: Kiln, registry: str, tmp_path: Path
) -> None:
    kiln_digest = baked.json("inspect", "web:1")["digest"]
    manifest = json.loads(skopeo("inspect", "--raw", f"oci:{baked.oci}:web:1"))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }

    skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{baked.oci}:web:1", f"docker://{registry}/web:1"
    )
    served = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{registry}/web:1"))
    assert served["Digest"] == kiln_digest, "the registry names the image as kiln does"

    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry}/web:1", f"oci:{back}:web:1")
    index = json.loads((back / "index.json").read_text())
    assert [entry["digest"] for entry in index["manifests"]] == [kiln_digest]
    # every blob came back byte for byte: the config and the layers are kiln's
    for descriptor in [manifest["config"], *manifest["layers"]]:
        hexdigest = descriptor["digest"].split(":", 1)[1]
        ours = baked.oci / "blobs" / "sha256" / hexdigest
        theirs = back / "blobs" / "sha256" / hexdigest
        assert theirs.read_bytes() == ours.read_bytes()
