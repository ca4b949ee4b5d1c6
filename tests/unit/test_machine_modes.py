"""What a launch makes in a machine's folder has kiln's modes, not the caller's umask: under
umask 077 an upper dir made 0700 is a machine whose `/` is drwx------, and config made 0600
is config its services cannot read. kiln.cli.main sets umask 022 too, but other front ends
call the machines layer directly, as this test does."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.home import Home
from kiln.machines import config, launch, volumes
from kiln.machines.folder import Folder, Proc, State, claim, make_dir, save


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_a_launch_makes_its_folders_and_files_with_their_own_modes(
    tmp_path: Path, umask_077: None
) -> None:
    home = Home(tmp_path / "home")  # not there yet: the launch makes it
    folder = Folder.of(home, "web")
    claim(folder)
    layer = make_dir(tmp_path / "layer")
    launch._overlay((layer,), folder)  # its folders, before the mount
    launch._write_config(folder, "web", "web:1", config.Values({"site_title": "Site"}))
    [volume] = volumes.plan(folder, ["/var/lib/web"], [])
    assert volumes.prepare(volume, folder.root)  # new, and not in the image: 0755
    state = State("web", "web:1", "sha256:" + "0" * 64, "boot", Proc(1, 1), Proc(2, 2))
    save(folder, state)

    made = [home.root, folder.path.parent, folder.path, folder.upper, folder.work, folder.root]
    made += [folder.config, folder.seed, folder.volumes, volume.source]
    assert {path.relative_to(tmp_path): mode(path) for path in made} == {
        Path("home"): 0o755,
        Path("home/machines"): 0o755,
        Path("home/machines/web"): 0o755,
        Path("home/machines/web/upper"): 0o755,  # the machine's /
        Path("home/machines/web/work"): 0o700,  # overlayfs' scratch
        Path("home/machines/web/root"): 0o755,
        Path("home/machines/web/config"): 0o755,
        Path("home/machines/web/config/seed"): 0o755,
        Path("home/machines/web/volumes"): 0o755,
        Path("home/machines/web/volumes/var-lib-web"): 0o755,
    }
    files = [
        folder.state_file,
        folder.env_file,
        folder.seed / "meta-data",
        folder.seed / "user-data",
    ]
    assert {path.name: mode(path) for path in files} == {path.name: 0o644 for path in files}


def test_a_new_volume_keeps_the_images_mode_and_an_existing_folder_its_own(
    tmp_path: Path, umask_077: None
) -> None:
    image = tmp_path / "image"
    (image / "var/lib/web").mkdir(parents=True)
    os.chmod(image / "var/lib/web", 0o750)
    (image / "var/lib/web/page").write_text("kept")
    folder = Folder(tmp_path / "machines" / "web")
    [volume] = volumes.plan(folder, ["/var/lib/web"], [])
    assert volumes.prepare(volume, image)
    assert mode(volume.source) == 0o750 and (volume.source / "page").read_text() == "kept"

    own = make_dir(tmp_path / "own", 0o700)
    os.chmod(own, 0o711)
    assert mode(make_dir(own)) == 0o711, "a folder that exists keeps its mode"


def test_a_store_and_a_build_overlay_take_no_mode_from_the_umask(
    tmp_path: Path, umask_077: None
) -> None:
    """A bake's overlay upper is its layer's root: made 0700, every image of it would be a
    root no service can enter. The store's folders and atomic writes keep their modes too."""
    from kiln.atomic import write_atomic
    from kiln.mounts import Overlay

    home = Home(tmp_path / "home")
    home.ensure()
    assert {mode(path) for path in (home.root, home.layers, home.tmp, home.locks)} == {0o755}
    write_atomic(tmp_path / "a" / "b" / "file", b"x")
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o755
    assert mode(tmp_path / "a" / "b" / "file") == 0o644
    if os.geteuid() != 0:
        pytest.skip("mounting an overlay needs root")
    lower = make_dir(tmp_path / "lower")
    overlay = Overlay(
        [lower],
        tmp_path / "build" / "upper",
        tmp_path / "build" / "work",
        tmp_path / "build" / "root",
    )
    with overlay:
        assert mode(overlay.target) == 0o755
    assert mode(overlay.upper) == 0o755 and mode(overlay.work) == 0o700
