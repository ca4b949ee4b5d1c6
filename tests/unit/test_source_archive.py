"""The source archive (kiln.store.archive): GNU tar makes the same bytes from the same
files whatever their owners and times, and they unpack to those files again; a hostile
archive (absolute names, '..', links out, members below a link, hard links, devices,
FIFOs, a member twice, too many bytes, not a tar) is refused before anything is written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.store import archive


def folder_with_inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes"
    (folder / "site" / "css").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("<h1>kiln</h1>\n")
    (folder / "site" / "css" / "a.css").write_text("h1 {}\n")
    (folder / "site" / "current").symlink_to("index.html")
    (folder / "hello").write_text("#!/bin/sh\necho kiln\n")
    (folder / "hello").chmod(0o750)
    os.link(folder / "hello", folder / "site" / "hello-again")  # a hard link: kept as a file
    (folder / "web.toml").write_text('[image]\nname = "web"\n')
    (folder / "unrelated").write_text("not an input\n")
    return folder


MEMBERS = ["web.toml", "hello", "site", "site/index.html"]


def test_the_same_files_give_the_same_bytes_and_unpack_to_them(tmp_path: Path) -> None:
    folder = folder_with_inputs(tmp_path)
    first = archive.pack(folder, MEMBERS, tmp_path / "tmp")
    os.utime(folder / "hello", (1, 1))
    if os.geteuid() == 0:
        os.chown(folder / "site" / "index.html", 1234, 5678)
    assert archive.pack(folder, list(reversed(MEMBERS)), tmp_path / "tmp") == first

    with tarfile.open(fileobj=io.BytesIO(first)) as read:
        infos = read.getmembers()
    names = [info.name for info in infos]
    assert names.count("./site/index.html") == 1, "a member inside a listed folder goes once"
    assert "./unrelated" not in names
    assert all(info.mtime == 0 and info.uid == 0 and info.gid == 0 for info in infos)
    assert not any(info.islnk() for info in infos), "hard links are stored as files"

    dest = tmp_path / "out"
    archive.unpack(first, dest, "the source archive")
    assert (dest / "web.toml").read_text() == '[image]\nname = "web"\n'
    assert stat.S_IMODE((dest / "hello").stat().st_mode) == 0o750
    assert os.readlink(dest / "site" / "current") == "index.html"
    assert (dest / "site" / "css" / "a.css").read_text() == "h1 {}\n"
    assert (dest / "site" / "hello-again").read_text() == "#!/bin/sh\necho kiln\n"
    assert not (dest / "unrelated").exists()


def tar_of(*members: tuple[str, Callable[[tarfile.TarInfo], None], bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, shape, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            shape(info)
            out.addfile(info, io.BytesIO(data) if data else None)
    return raw.getvalue()


def plain(_info: tarfile.TarInfo) -> None:
    pass


def link_to(target: str) -> Callable[[tarfile.TarInfo], None]:
    def shape(info: tarfile.TarInfo) -> None:
        info.type, info.linkname, info.size = tarfile.SYMTYPE, target, 0

    return shape


def of_type(kind: bytes, target: str = "") -> Callable[[tarfile.TarInfo], None]:
    def shape(info: tarfile.TarInfo) -> None:
        info.type, info.linkname, info.size = kind, target, 0

    return shape


HOSTILE = {
    "absolute": (tar_of(("/etc/cron.d/x", plain, b"x")), "absolute path"),
    "dotdot": (tar_of(("site/../../x", plain, b"x")), "leads out of the archive"),
    "link absolute": (tar_of(("etc", link_to("/etc"), b"")), "leads out of the archive"),
    "link up": (tar_of(("a/up", link_to("../../x"), b"")), "leads out of the archive"),
    "link up late": (
        tar_of(("a/l", link_to("b/../../../x"), b"")),
        "leads out of the archive",
    ),
    "below a link": (
        tar_of(("a", link_to("b"), b""), ("a/passwd", plain, b"x")),
        "lies below the link",
    ),
    "below a file": (
        tar_of(("a", plain, b"x"), ("a/b", plain, b"x")),
        "lies below the file",
    ),
    "link over a folder": (
        tar_of(("a/b", plain, b"x"), ("a", link_to("c"), b"")),
        "earlier members lie below it",
    ),
    "twice": (tar_of(("x", plain, b"1"), ("./x", plain, b"2")), "in it twice"),
    "hard link": (tar_of(("x", plain, b"1"), ("y", of_type(tarfile.LNKTYPE, "x"), b"")), "hard"),
    "device": (tar_of(("null", of_type(tarfile.CHRTYPE), b"")), "a character device"),
    "fifo": (tar_of(("pipe", of_type(tarfile.FIFOTYPE), b"")), "a FIFO"),
    "not a tar": (b"\x7fELF" + b"\x00" * 700, "does not read as a tar archive"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_before_anything_is_written(case: str, tmp_path: Path) -> None:
    data, message = HOSTILE[case]
    dest = tmp_path / "out"
    with pytest.raises(archive.BadArchive, match=message) as caught:
        archive.unpack(data, dest, "the source archive of web:2")
    assert caught.value.exit_code == 2 and caught.value.hint
    assert not dest.exists(), "nothing half-written"
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "x").exists()


def test_an_archive_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_BYTES", 10)
    data = tar_of(("a", plain, b"123456"), ("b", plain, b"123456"))
    with pytest.raises(archive.BadArchive, match="unpacks to more than"):
        archive.unpack(data, tmp_path / "out", "the source archive")
    monkeypatch.setattr(archive, "MAX_MEMBERS", 1)
    with pytest.raises(archive.BadArchive, match="more than 1 members"):
        archive.unpack(tar_of(("a", plain, b""), ("b", plain, b"")), tmp_path / "out", "it")


def test_a_bake_keeps_no_archive_a_proof_would_refuse(tmp_path: Path) -> None:
    """Inputs holding a symlink out of the folder: no archive is kept (the proof then
    falls back to the checkout, as for an image baked before archives were kept)."""
    from kiln.bake import cachekey, source
    from kiln.recipe import load_recipe

    folder = folder_with_inputs(tmp_path)
    recipe = folder / "web.toml"
    recipe.write_text('[image]\nname = "web"\n\n[[steps]]\ncopy = "site/"\nto = "/srv/"\n')
    loaded = load_recipe(recipe)
    kept = source.pack(loaded, cachekey.materials(loaded), tmp_path / "tmp")
    assert kept is not None and archive.readable(kept)
    (folder / "site" / "etc").symlink_to("/etc")
    loaded = load_recipe(recipe)
    assert source.pack(loaded, cachekey.materials(loaded), tmp_path / "tmp") is None
