"""Integrity on use: a bake or a machine never uses a layer blob that is missing or wrong.

Each test works on a private copy of the session store (or a fresh one), since it damages
blobs on purpose. Machines it starts are removed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import EXAMPLES, Kiln
from tests.tamper import flip_byte

GIB = 1 << 30
SKIP = {"machines", "builds", "tmp", "cache"}  # what a copy of the store does not need


@pytest.fixture
def private(baked: Kiln, tmp_path: Path) -> Kiln:
    """A copy of the session store (blobs, unpacked layers, catalog) of the test's own."""
    home = tmp_path / "home"
    home.mkdir()
    for entry in sorted(baked.home.iterdir()):
        if entry.name not in SKIP:
            subprocess.run(["cp", "-a", "--", str(entry), str(home)], check=True)
    (home / "tmp").mkdir()
    return Kiln(home)


def top_layer(kiln: Kiln, ref: str) -> dict[str, Any]:
    layer: dict[str, Any] = kiln.json("inspect", ref)["layers"][-1]
    return layer


def blob_path(kiln: Kiln, digest: str) -> Path:
    return kiln.oci / "blobs" / "sha256" / digest.split(":", 1)[1]


def layer_dir(kiln: Kiln, diff_id: str) -> Path:
    return kiln.home / "layers" / diff_id.split(":", 1)[1]


def inside_file_data(blob: Path) -> tuple[str, int]:
    """A member name and an offset in the middle of its content (a plain regular file)."""
    with tarfile.open(blob) as archive:
        files = [m for m in archive if m.isreg() and m.size >= 64 and not m.sparse]
    member = max(files, key=lambda m: m.size)
    return member.name, member.offset_data + member.size // 2


def child_recipe(folder: Path, parent: str) -> Path:
    recipe = folder / "child.toml"
    recipe.write_text(f'[image]\nname = "child"\nparent = "{parent}"\n\n[[steps]]\nrun = "true"\n')
    return recipe


def scratch_entries(kiln: Kiln) -> list[str]:
    return sorted(p.name for p in (kiln.home / "tmp").iterdir() if p.name != ".lock")


def run_web(kiln: Kiln, name: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return kiln.run(
        "run", "web", "--name", name, "--set", "site_title=t", "--set", "api_token=s",
        check=check,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess[str], digest: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert digest in output and "kiln fsck" in output, output
    assert "Traceback" not in output, output


def test_a_corrupt_byte_in_file_data_fails_bake_and_run(private: Kiln, tmp_path: Path) -> None:
    layer = top_layer(private, "web")
    blob = blob_path(private, layer["digest"])
    pristine = tmp_path / "pristine-blob"
    shutil.copy2(blob, pristine)
    if layer["media_type"].endswith(".tar"):  # a store written before layers were compressed
        member, offset = inside_file_data(blob)
        flip_byte(blob, offset)
        # tar alone sees nothing wrong: the headers are intact, only file content changed
        listed = subprocess.run(["tar", "--list", f"--file={blob}"], capture_output=True, text=True)
        assert listed.returncode == 0 and member in listed.stdout.splitlines()
    else:
        flip_byte(blob, blob.stat().st_size // 2)  # in the middle of the compressed data
    shutil.rmtree(layer_dir(private, layer["diff_id"]))
    layers_before = sorted(os.listdir(private.home / "layers"))

    name = f"corrupt-{secrets.token_hex(3)}"
    try:
        baked = private.run("bake", str(child_recipe(tmp_path, "web")), check=False)
        for result in (baked, run_web(private, name, check=False)):
            assert_refused(result, layer["digest"])
            assert "corrupt" in result.stderr
            assert sorted(os.listdir(private.home / "layers")) == layers_before
            assert scratch_entries(private) == []
        assert not (private.home / "machines" / name).exists()
        assert "child" not in {i["name"] for i in private.json("images")}
        fsck = private.run("fsck", check=False)
        assert fsck.returncode == 1 and layer["digest"][7:] in fsck.stdout + fsck.stderr

        # with the blob put back, the same store unpacks (verified) and boots again
        shutil.copy2(pristine, blob)
        run_web(private, name)
        assert layer_dir(private, layer["diff_id"]).is_dir()
        assert scratch_entries(private) == []
    finally:
        private.run("rm", "--volumes", name, check=False)


def test_a_missing_blob_is_refused_though_its_layer_is_unpacked(
    private: Kiln, tmp_path: Path
) -> None:
    layer = top_layer(private, "web")
    assert layer_dir(private, layer["diff_id"]).is_dir()
    blob_path(private, layer["digest"]).unlink()
    name = f"missing-{secrets.token_hex(3)}"
    try:
        ran = run_web(private, name, check=False)
        assert_refused(ran, layer["digest"])
        assert "missing" in ran.stderr
        assert not (private.home / "machines" / name).exists()
        assert name not in {m["name"] for m in private.json("ps")}
        baked = private.run("bake", str(child_recipe(tmp_path, "web")), check=False)
        assert_refused(baked, layer["digest"])
        assert "child" not in {i["name"] for i in private.json("images")}
    finally:
        private.run("rm", "--volumes", name, check=False)


def test_a_sparse_file_stays_sparse_in_the_blob_and_the_unpacked_layer(
    fresh: Kiln, tmp_path: Path
) -> None:
    tree = tmp_path / "vendor"
    (tree / "data").mkdir(parents=True)
    subprocess.run(["truncate", "--size=1G", str(tree / "data" / "disk.img")], check=True)
    (tree / "data" / "readme").write_text("a vendor root with a sparse disk image\n")
    vendor = tmp_path / "vendor.tar"
    subprocess.run(
        ["tar", "--sparse", "--create", f"--file={vendor}", f"--directory={tree}", "."],
        check=True,
    )
    assert vendor.stat().st_size <= 10 * 1024
    recipe = tmp_path / "sparse.toml"
    recipe.write_text('[image]\nname = "sparse"\nimport = "vendor.tar"\n')
    fresh.run("bake", str(recipe))
    [layer] = fresh.json("inspect", "sparse")["layers"]
    assert layer["size"] < 64 * 1024, "the hole went into the blob"

    def assert_sparse(path: Path) -> None:
        st = path.stat()
        assert st.st_size == GIB and st.st_blocks * 512 <= 64 * 1024, (path, st)
        du = subprocess.run(["du", "-k", str(path)], capture_output=True, text=True, check=True)
        assert int(du.stdout.split()[0]) <= 64, du.stdout

    unpacked = layer_dir(fresh, layer["diff_id"])
    assert_sparse(unpacked / "data" / "disk.img")
    # unpacked again from the blob (a child bake needs it): the hole is restored
    shutil.rmtree(unpacked)
    child = tmp_path / "child.toml"
    (tmp_path / "note").write_text("on top\n")
    child.write_text(
        '[image]\nname = "sparse-child"\nparent = "sparse"\n\n'
        '[[steps]]\ncopy = "note"\nto = "/data/note"\n'
    )
    fresh.run("bake", str(child))
    assert_sparse(unpacked / "data" / "disk.img")
    assert (unpacked / "data" / "readme").read_text().startswith("a vendor root")
    assert fresh.run("fsck", check=False).returncode == 0


def test_fsck_deep_names_what_changed_in_an_unpacked_layer(fresh: Kiln) -> None:
    """A machine trusts its unpacked layers as they are; --deep checks them against the
    inventories the bake recorded, plain fsck does not read them."""
    fresh.run("bake", str(EXAMPLES / "tiny.toml"))
    assert fresh.json("fsck", "--deep")["layers"] == 1
    [layer] = fresh.json("inspect", "tiny")["layers"]
    tree = layer_dir(fresh, layer["diff_id"])
    (tree / "usr/local/bin/hello").write_text("#!/bin/sh\necho changed\n")
    os.chmod(tree / "bin/busybox", 0o4755)
    (tree / "etc").mkdir(exist_ok=True)
    (tree / "etc/planted").write_text("x\n")

    assert fresh.run("fsck").returncode == 0
    deep = fresh.run("fsck", "--deep", "--json", check=False)
    assert deep.returncode == 1, deep.stdout + deep.stderr
    where = f"tiny:1 layer 0 unpacked in {tree}: "
    assert sorted(json.loads(deep.stdout)["faults"]) == [
        where + "/bin/busybox: mode 0755 -> 4755",
        where + "/etc/planted: extra (file)",
        where + "/usr/local/bin/hello: content",
    ]
    shown = fresh.run("fsck", "--deep", check=False).stdout
    assert "3 faults: " in shown and "1 unpacked layers checked" in shown, shown
