"""kiln never writes or deletes outside a root, whatever symlinks the image holds.

Each test keeps a sentinel folder in its own temp dir, reaches it through a symlink
planted in the image, and checks afterwards that it is exactly as it was.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from kiln import rootpath
from kiln.errors import KilnError
from kiln.rootpath import Root
from kiln.steps.copy import copy

from .conftest import Kiln

Tree = dict[str, tuple[int, int, bytes]]
LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def make_sentinel(folder: Path) -> Path:
    folder.mkdir()
    (folder / "secret").write_text("must survive\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "data").write_text("also\n")
    return folder


def snapshot(folder: Path) -> Tree:
    out: Tree = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = os.lstat(path)
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_uid, data)
    return out


def rootfs(kiln: Kiln, ref: str, tmp_path: Path) -> dict[str, tarfile.TarInfo]:
    out = tmp_path / f"{ref.replace(':', '-')}-rootfs.tar"
    kiln.run("export", ref, "--format", "rootfs-tar", "-o", str(out))
    with tarfile.open(out) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


# --- (a) a copy step through an image's symlinks ---


def test_copy_through_image_symlinks_stays_in_the_image(baked: Kiln, tmp_path: Path) -> None:
    sentinel = make_sentinel(tmp_path / "sentinel")
    before = snapshot(sentinel)
    name = f"kiln-containment-{uuid.uuid4().hex[:8]}"
    assert not os.path.lexists(f"/run/{name}")
    (tmp_path / "f").write_text("copied\n")
    recipe = tmp_path / "through.toml"
    recipe.write_text(
        '[image]\nname = "contain-copy"\nparent = "tiny"\n\n'
        '[[steps]]\nrun = "mkdir -p /var /run && ln -s /run /var/run && '
        f'ln -s {sentinel} /var/esc && ln -s {sentinel}/secret /var/esc-file"\n\n'
        f'[[steps]]\ncopy = "f"\nto = "/var/run/{name}"\n\n'
        '[[steps]]\ncopy = "f"\nto = "/var/esc/planted"\n\n'
        '[[steps]]\ncopy = "f"\nto = "/var/esc-file"\n'
    )
    baked.run("bake", str(recipe))
    assert not os.path.lexists(f"/run/{name}"), "the copy wrote onto the host's /run"
    assert snapshot(sentinel) == before
    files = rootfs(baked, "contain-copy", tmp_path)
    assert files[f"run/{name}"].isfile()
    assert files["var/run"].issym() and files["var/run"].linkname == "/run"
    # /var/esc/planted went to the image's own <sentinel path>, under /tmp: the seal empties it
    assert files["var/esc"].issym()
    assert files["var/esc-file"].isfile()  # the link was replaced, its target untouched


# --- (b) a multi-layer OCI archive with whiteouts through a symlink ---


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(tmp_path: Path, name: str, entries: dict[str, str | None]) -> bytes:
    """A layer tar: path -> file content, '/target' for a symlink, None for a folder.

    Only the entries given are written (no implicit parent folders), as a hostile
    archive would be."""
    out = tmp_path / f"{name}.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in entries.items():
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                data = content.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, _Reader(data))
    return out.read_bytes()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def oci_archive(tmp_path: Path, layers: list[bytes]) -> Path:
    layout = tmp_path / "vendor-layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(blobs, data)}
        for data in layers
    ]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": [d["digest"] for d in descriptors],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(blobs, json.dumps(config).encode()),
        },
        "layers": descriptors,
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_blob(blobs, json.dumps(manifest).encode()),
            }
        ],
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index))
    archive = tmp_path / "vendor-oci.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ["oci-layout", "index.json", "blobs"]:
            tar.add(layout / name, arcname=name)
    return archive


def test_import_whiteouts_through_a_symlink_stay_in_the_image(baked: Kiln, tmp_path: Path) -> None:
    sentinel = make_sentinel(tmp_path / "sentinel")
    before = snapshot(sentinel)
    lower = _layer(
        tmp_path,
        "lower",
        {
            "lnk": f"->{sentinel}",
            "rel": "->../" + "../" * len(sentinel.parts) + str(sentinel).lstrip("/"),
            "real": None,
            "real/old": "old\n",
            "real/sub": None,
            "real/sub/f": "f\n",
            "keep": None,
            "keep/gone": "gone\n",
            "keep/stays": "stays\n",
            "etc": None,
            "etc/hostname": "vendor\n",
        },
    )
    upper = _layer(
        tmp_path,
        "upper",
        {
            "lnk/.wh.secret": "",
            "lnk/.wh..wh..opq": "",
            "lnk/sub/.wh.data": "",
            "rel/.wh..wh..opq": "",
            "lnk/planted": "planted\n",
            "real/.wh..wh..opq": "",
            "real/new": "new\n",
            "keep/.wh.gone": "",
        },
    )
    top = _layer(tmp_path, "top", {"real/.wh.new": "", "real/newer": "newer\n"})
    archive = oci_archive(tmp_path, [lower, upper, top])
    recipe = tmp_path / "vendor.toml"
    recipe.write_text(f'[image]\nname = "contain-import"\nimport = "{archive.name}"\n')
    baked.run("bake", str(recipe))
    assert snapshot(sentinel) == before
    files = rootfs(baked, "contain-import", tmp_path)
    assert files["lnk"].issym() and files["lnk"].linkname == str(sentinel)
    assert "real/old" not in files and "real/sub" not in files  # opaque
    assert "real/new" not in files and files["real/newer"].isfile()  # a later layer's whiteout
    assert "keep/gone" not in files and files["keep/stays"].isfile()
    assert "etc/hostname" not in files, "sealed: a machine's host name is its own"


# --- (c) a folder swapped for a symlink while a copy runs ---


@pytest.mark.parametrize("kernel", [True, False], ids=["openat2", "fallback"])
def test_a_symlink_swapped_during_a_copy_never_leads_out(tmp_path: Path, kernel: bool) -> None:
    if kernel and not rootpath.OPENAT2:
        pytest.skip("this kernel has no openat2")
    sentinel = make_sentinel(tmp_path / "sentinel")
    before = snapshot(sentinel)
    tree = tmp_path / "root"
    (tree / "srv" / "flip").mkdir(parents=True)
    source = tmp_path / "site"
    for index in range(40):
        (source / f"d{index % 4}").mkdir(parents=True, exist_ok=True)
        (source / f"d{index % 4}" / f"f{index}").write_bytes(os.urandom(64 * 1024))
    (tree / "srv" / "other").symlink_to(str(sentinel))
    stop = threading.Event()
    flips = 0

    def flip() -> None:  # swap the real folder and the symlink, atomically, over and over
        nonlocal flips
        names = [os.fsencode(tree / "srv" / n) for n in ("flip", "other")]
        while not stop.is_set():
            if LIBC.renameat2(AT_FDCWD, names[0], AT_FDCWD, names[1], RENAME_EXCHANGE) != 0:
                code = ctypes.get_errno()
                if code == errno.ENOENT:
                    continue  # the copy is replacing one of the two just now
                raise OSError(code, "renameat2")
            flips += 1

    thread = threading.Thread(target=flip)
    thread.start()
    failures = 0
    try:
        deadline = time.monotonic() + 3
        with Root(tree, kernel=kernel) as root:
            while time.monotonic() < deadline:
                try:
                    copy(root, source, "/srv/flip/", None, None)
                    root.remove_tree("/srv/flip/d0")
                except (OSError, KilnError):
                    failures += 1  # the folder moved under the copy: fine, as long as inside
    finally:
        stop.set()
        thread.join()
    assert flips > 10, (flips, failures)
    assert snapshot(sentinel) == before
    assert sorted(os.listdir(sentinel)) == ["secret", "sub"]


# --- (d) seal rules through a symlink ---


def test_seal_paths_through_a_symlink_stay_in_the_image(baked: Kiln, tmp_path: Path) -> None:
    sentinel = make_sentinel(tmp_path / "sentinel")
    before = snapshot(sentinel)
    recipe = tmp_path / "sealed.toml"
    recipe.write_text(
        '[image]\nname = "contain-seal"\nparent = "tiny"\n\n'
        f'[[steps]]\nrun = "mkdir -p /srv/cache /var/log && ln -s {sentinel} /srv/esc && '
        f"ln -s {sentinel} /var/log/esc && ln -s {sentinel} /srv/cache/esc && "
        'echo x > /srv/cache/tmpfile"\n\n'
        '[seal]\npaths = ["/srv/esc/*", "/srv/esc/sub/**", "/srv/cache/**"]\n'
    )
    baked.run("bake", str(recipe))
    assert snapshot(sentinel) == before
    files = rootfs(baked, "contain-seal", tmp_path)
    assert "srv/cache/tmpfile" not in files and "srv/cache/esc" not in files
    assert files["srv/esc"].issym()
