"""The same locked inputs give the same image digest on any host.

Two copies of the examples at different paths, baked under different host names (a UTS
namespace each) into two fresh stores, give one manifest digest: nothing host-specific
reaches the config or a layer. Who built it is in the provenance, outside the digest.

Only the tiny example (busybox on scratch) is baked here: a Debian base costs a minute
per bootstrap, and its apt sources are an input that differs between hosts by design.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.conftest import EXAMPLES, Kiln

PROVENANCE = "application/vnd.in-toto+json"


def bake_as(kiln: Kiln, host: str, recipe: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$1" && shift && exec "$@"',
            "sh",
            host,
            *kiln.argv("bake", "--json", str(recipe)),
        ],
        env=kiln.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    baked: dict[str, Any] = json.loads(result.stdout)
    return baked


def provenance(kiln: Kiln) -> dict[str, Any]:
    index = json.loads((kiln.oci / "index.json").read_text())
    blobs = kiln.oci / "blobs" / "sha256"
    for entry in index["manifests"]:
        if entry.get("artifactType") == PROVENANCE:
            manifest = json.loads((blobs / entry["digest"].split(":", 1)[1]).read_text())
            statement: dict[str, Any] = json.loads(
                (blobs / manifest["layers"][0]["digest"].split(":", 1)[1]).read_text()
            )
            return statement
    raise AssertionError(f"no provenance in {kiln.oci}")


def test_two_checkouts_on_two_hosts_bake_one_digest(tmp_path: Path) -> None:
    first = tmp_path / "one" / "examples"
    second = tmp_path / "elsewhere" / "much" / "deeper" / "copy"
    for target in (first, second):
        shutil.copytree(EXAMPLES, target, symlinks=True)
    Kiln(tmp_path / "lock-home").run("lock", str(first / "tiny.toml"))
    lock = first / "tiny.toml.lock"
    shutil.copy(lock, second / lock.name)

    homes = Kiln(tmp_path / "home-a"), Kiln(tmp_path / "home-b")
    a = bake_as(homes[0], "builder-a", first / "tiny.toml")
    b = bake_as(homes[1], "another-host-b", second / "tiny.toml")
    assert a["digest"] == b["digest"], "the same locked inputs gave two images"

    hosts = [
        provenance(home)["predicate"]["buildDefinition"]["internalParameters"]["builderHost"]
        for home in homes
    ]
    assert hosts == ["builder-a", "another-host-b"], "the bakes did not run as two hosts"
    labels = homes[0].json("inspect", "tiny:1")["labels"]
    assert not any("host" in key for key in labels), labels
