"""Signing for real: keys made, images signed and verified through the command line, and
a policy requiring signatures that `kiln run` obeys before a machine boots.

The tests work on one copy of the session store (blobs and catalog copied, unpacked
layers hard-linked: nothing writes to them), since they sign images and damage a blob.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Kiln, copy_home
from tests.tamper import flip_byte

PASSWORD = "integration password"


@pytest.fixture(scope="module")
def store(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> Kiln:
    return copy_home(baked, tmp_path_factory.mktemp("signing") / "home")


@pytest.fixture(scope="module")
def keys(store: Kiln) -> dict[str, Path]:
    """A release key pair that signs tiny and base, and a stranger's that signs nothing."""
    folder = store.home.parent / "keys"
    folder.mkdir(mode=0o700)  # kiln key generate makes no folder it is not told of
    out = {}
    for name in ("release", "stranger"):
        made = json.loads(kiln(store, "key", "generate", "--output", str(folder / name), "--json"))
        out[name], out[f"{name}.pub"] = Path(made["private_key"]), Path(made["public_key"])
    return out


@pytest.fixture
def named(store: Kiln) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        store.run("rm", "--force", "--volumes", name, check=False)


def kiln(store: Kiln, *args: str, check: bool = True, policy: Path | None = None) -> str:
    result = call(store, *args, policy=policy)
    if check and result.returncode != 0:
        raise AssertionError(
            f"kiln {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def call(store: Kiln, *args: str, policy: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**store.env(), "KILN_KEY_PASSWORD": PASSWORD}
    env.pop("KILN_POLICY", None)
    if policy is not None:
        env["KILN_POLICY"] = str(policy)
    return subprocess.run(store.argv(*args), env=env, capture_output=True, text=True, check=False)


def write_policy(store: Kiln, name: str, key: Path) -> Path:
    path = store.home.parent / f"{name}.toml"
    path.write_text(f'[trust]\nkeys = ["{key}"]\nrequire_signatures = true\n')
    return path


def top_layer(store: Kiln, ref: str) -> dict[str, Any]:
    layer: dict[str, Any] = store.json("inspect", ref)["layers"][-1]
    return layer


def test_a_signed_image_verifies_and_runs_under_a_policy(
    store: Kiln, keys: dict[str, Path], named: list[str]
) -> None:
    assert os.stat(keys["release"]).st_mode & 0o777 == 0o600
    signed = json.loads(kiln(store, "sign", "tiny", "--key", str(keys["release"]), "--json"))
    assert signed["signatures"] == 1 and signed["tag"] == f"sha256-{signed['digest'][7:]}.sig"
    found = json.loads(kiln(store, "verify", "tiny", "--key", str(keys["release.pub"]), "--json"))
    assert found["ok"] and found["key_ids"] == [signed["key_id"]] and not found["problems"]
    kiln(store, "sign", "base", "--key", str(keys["release"]))
    kiln(store, "fsck")  # the signature manifests are artefacts the store checks

    policy = write_policy(store, "release", keys["release.pub"])
    by_policy = json.loads(kiln(store, "verify", "base", "--json", policy=policy))
    assert by_policy["ok"] and by_policy["policy"]["path"] == str(policy)

    refused = call(store, "run", "web", "--name", "unsigned", policy=policy)
    assert refused.returncode == 1, refused.stderr
    assert "not trusted" in refused.stderr and "no signature" in refused.stderr
    assert "unsigned" not in [m["name"] for m in store.json("ps", "--all")]

    name = f"signed-{secrets.token_hex(3)}"
    named.append(name)
    launched = json.loads(
        kiln(store, "run", "base", "--name", name, "--wait", "--json", policy=policy)
    )
    assert launched["image"].startswith("base:")
    kiln(store, "stop", name)
    stranger = write_policy(store, "stranger", keys["stranger.pub"])
    again = call(store, "start", name, policy=stranger)
    assert again.returncode == 1 and "unknown key" in again.stderr, again.stderr
    [row] = [m for m in store.json("ps", "--all") if m["name"] == name]
    assert row["state"] == "stopped", row


def test_an_unknown_key_is_refused(store: Kiln, keys: dict[str, Path]) -> None:
    kiln(store, "sign", "tiny", "--key", str(keys["release"]))
    unknown = call(store, "verify", "tiny", "--key", str(keys["stranger.pub"]))
    assert unknown.returncode == 1 and "unknown key" in unknown.stdout, unknown.stdout
    policy = write_policy(store, "stranger", keys["stranger.pub"])
    refused = call(store, "run", "tiny", "--name", "stranger", policy=policy)
    assert refused.returncode == 1 and "unknown key" in refused.stderr, refused.stderr


def test_a_flipped_byte_in_a_layer_fails_verify_and_run(
    store: Kiln, keys: dict[str, Path], named: list[str]
) -> None:
    kiln(store, "sign", "base", "--key", str(keys["release"]))
    layer = top_layer(store, "base")
    blob = store.oci / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
    policy = write_policy(store, "release", keys["release.pub"])
    flip_byte(blob, blob.stat().st_size // 2)  # inside the gzip data
    try:
        found = call(store, "verify", "base", "--key", str(keys["release.pub"]), "--json")
        assert found.returncode == 1
        problems = json.loads(found.stdout)["problems"]
        assert any(p.startswith("tampered layer") and layer["digest"] in p for p in problems)
        name = f"tampered-{secrets.token_hex(3)}"
        named.append(name)
        refused = call(store, "run", "base", "--name", name, "--wait", policy=policy)
        assert refused.returncode == 1 and "tampered layer" in refused.stderr, refused.stderr
        assert name not in [m["name"] for m in store.json("ps", "--all")]
    finally:
        flip_byte(blob, blob.stat().st_size // 2)
    assert json.loads(kiln(store, "verify", "base", "--json", policy=policy))["ok"]
