"""Hostile input and a full disk, through the CLI as a user runs it.

A full KILN_HOME gives one kiln error and leaves nothing half-made; a recipe that is a
device or names a FIFO is refused at load (exit 2) before anything runs; an imported root's
device nodes and setuid files are told in the bake's output and in kiln inspect.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.integration.conftest import EXAMPLES, Kiln


def sentinel(tmp_path: Path) -> tuple[Path, bytes]:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "sentinel"
    path.write_bytes(b"untouched\n")
    return path, path.read_bytes()


def assert_untouched(path: Path, content: bytes) -> None:
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == ["sentinel"]


def test_a_full_disk_is_one_kiln_error_and_leaves_nothing_half_made(tmp_path: Path) -> None:
    guard, content = sentinel(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(EXAMPLES / "tiny.toml", src)
    shutil.copytree(EXAMPLES / "tiny", src / "tiny")
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(home)], check=True)
    try:
        kiln = Kiln(home)
        result = kiln.run("bake", "--json", str(src / "tiny.toml"), check=False)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "no space left on device" in result.stderr.lower()
        assert "free space" in result.stderr
        report = kiln.json("fsck")
        assert report["faults"] == [], report
        assert kiln.json("images") == []
    finally:
        subprocess.run(["umount", str(home)], check=True)
    assert_untouched(guard, content)


def test_a_recipe_symlinked_to_dev_zero_exits_2_at_once(fresh: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "zero.toml"
    recipe.symlink_to("/dev/zero")
    result = subprocess.run(
        fresh.argv("bake", str(recipe)),
        env=fresh.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(recipe) in result.stderr and "character device" in result.stderr


def test_a_fifo_as_a_copy_source_exits_2_without_hanging(fresh: Kiln, examples: Path) -> None:
    hello = examples / "tiny" / "hello"
    hello.unlink()
    os.mkfifo(hello)
    result = subprocess.run(
        fresh.argv("bake", str(examples / "tiny.toml")),
        env=fresh.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "steps[1].copy" in result.stderr and "FIFO" in result.stderr
    assert not (fresh.home / "oci" / "index.json").exists() or fresh.json("images") == []


def _member(name: str, kind: bytes, mode: int, **extra: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def test_an_imports_devices_and_setuid_files_are_listed(fresh: Kiln, tmp_path: Path) -> None:
    guard, content = sentinel(tmp_path)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    with tarfile.open(vendor / "root.tar", "w") as tar:
        for folder in ("dev", "usr", "usr/bin", "etc"):
            tar.addfile(_member(folder, tarfile.DIRTYPE, 0o755))
        tar.addfile(_member("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3))
        tar.addfile(_member("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0))
        su = b"#!/bin/sh\n"
        tar.addfile(_member("usr/bin/su", tarfile.REGTYPE, 0o4755, size=len(su)), io.BytesIO(su))
        tar.addfile(_member("usr/bin/wall", tarfile.REGTYPE, 0o2755, size=0), io.BytesIO())
        motd = b"hello\n"
        tar.addfile(_member("etc/motd", tarfile.REGTYPE, 0o644, size=len(motd)), io.BytesIO(motd))
        # a symlink to the sentinel: the scan must not follow it
        tar.addfile(_member("etc/escape", tarfile.SYMTYPE, 0o777, linkname=str(guard)))
    (vendor / "vendor.toml").write_text('[image]\nname = "vendor"\nimport = "root.tar"\n')
    result = fresh.run("bake", str(vendor / "vendor.toml"))
    for path in ("/dev/null", "/dev/sda", "/usr/bin/su", "/usr/bin/wall"):
        assert path in result.stderr, result.stderr
    assert "/etc/motd" not in result.stderr and "/etc/escape" not in result.stderr
    labels = fresh.json("inspect", "vendor:1")["labels"]
    special = {item["path"]: item for item in json.loads(labels["org.kiln.import.special"])}
    assert set(special) == {"/dev/null", "/dev/sda", "/usr/bin/su", "/usr/bin/wall"}
    assert special["/dev/null"]["kind"] == "char device 1:3"
    assert special["/dev/sda"]["kind"] == "block device 8:0"
    assert special["/usr/bin/su"]["kind"] == "setuid" and special["/usr/bin/su"]["mode"] == "4755"
    assert special["/usr/bin/wall"]["kind"] == "setgid"
    assert_untouched(guard, content)


def test_out_of_bounds_refs_and_a_step_refusing_its_input_exit_2(
    fresh: Kiln, tmp_path: Path
) -> None:
    """A version past a signed 64-bit integer, as an argument and as a recipe's parent, and
    a step that refuses its input when it runs: bad input (2), never a traceback; a command
    that fails is named as it ran inside the root, not as the systemd-nspawn that ran it."""
    fresh.run("bake", str(EXAMPLES / "tiny.toml"))
    result = fresh.run("inspect", "tiny:9223372036854775808", check=False)
    assert result.returncode == 2, result.stderr
    assert "a version is a whole number from 1 to 9223372036854775807" in result.stderr
    assert "Traceback" not in result.stderr

    recipe = tmp_path / "child.toml"
    recipe.write_text('[image]\nname = "child"\nparent = "tiny:99999999999999999999999"\n')
    result = fresh.run("bake", str(recipe), check=False)
    assert result.returncode == 2, result.stderr
    assert f"{recipe}:3: image.parent:" in result.stderr and "Traceback" not in result.stderr

    recipe.write_text(
        '[image]\nname = "child"\nparent = "tiny:1"\n\n'
        '[[steps]]\nrun = "true"\nshell = ["/bin/zsh", "-c"]\n'
    )
    result = fresh.run("bake", str(recipe), check=False)
    assert result.returncode == 2, result.stderr
    assert f"{recipe}:5: steps[0] (run) in the build root of child:" in result.stderr
    assert "/bin/zsh is not in the image" in result.stderr

    recipe.write_text(
        '[image]\nname = "child"\nparent = "tiny:1"\n\n[[steps]]\nrun = "echo no; exit 4"\n'
    )
    result = fresh.run("bake", str(recipe), check=False)
    assert result.returncode == 1, result.stderr
    assert "steps[0] (run) failed in the build root of child with exit code 4" in result.stderr
    assert "  command: /bin/sh -c 'echo no; exit 4'\n" in result.stderr
    assert "systemd-nspawn" not in result.stderr
    assert [image["name"] for image in fresh.json("images")] == ["tiny"]
