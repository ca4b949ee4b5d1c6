"""kiln gc on real folders, flocks and processes: only what nothing holds or refers to goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kiln import locks
from kiln.home import Home
from kiln.store import artefacts, gc
from kiln.store.layout import MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST, Descriptor, Layout

HOLDER = """
import sys, time
from pathlib import Path
from kiln import locks
path, held = locks.owned_dir(Path(sys.argv[1]), sys.argv[2])
print(path, flush=True)
time.sleep(60)
"""


def image(layout: Layout, name: str) -> tuple[Descriptor, Descriptor]:
    layer = layout.put_bytes(name.encode(), MEDIA_LAYER)
    config = layout.put_json(
        {"rootfs": {"type": "layers", "diff_ids": [layer.digest]}}, MEDIA_CONFIG
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }
    return layout.put_json(manifest, MEDIA_MANIFEST), layer


def store(tmp_path: Path) -> tuple[Home, Layout]:
    home = Home(tmp_path / "home")
    home.ensure()
    layout = Layout(home.oci, tmp=home.tmp)
    layout.init()
    return home, layout


def test_only_unreferenced_blobs_layers_and_orphan_referrers_go(tmp_path: Path) -> None:
    home, layout = store(tmp_path)
    kept, kept_layer = image(layout, "kept")
    sbom = artefacts.put(layout, kept, "sbom", "application/json", b"{}", "2026-01-01T00:00:00Z")
    layout.tag("kept:1", kept, [sbom])
    gone, gone_layer = image(layout, "gone")  # written, then its bake died before the tag
    orphan = artefacts.put(layout, gone, "sbom", "application/json", b"[]", "2026-01-01T00:00:00Z")
    layout.tag("gone:1", gone, [orphan])
    layout.untag("gone:1")  # as gc does for an unfinished bake: its referrer stays behind
    (home.layers / kept_layer.hex).mkdir()
    (home.layers / gone_layer.hex).mkdir()
    (home.layers / gone_layer.hex / "file").write_bytes(b"x" * 5000)
    before = sorted(p.name for p in layout.blobs.iterdir())

    dry = gc.sweep_store(home, layout, dry_run=True)
    assert sorted(p.name for p in layout.blobs.iterdir()) == before
    assert (home.layers / gone_layer.hex).is_dir()

    with gc.store_sweep(home):
        done = gc.sweep_store(home, layout, dry_run=False)
    assert [(i.kind, i.path) for i in done] == [(i.kind, i.path) for i in dry]
    kinds = sorted(item.kind for item in done)
    # gone's manifest, config and layer; the orphan's manifest and document ("{}" is shared)
    assert kinds == ["blob"] * 5 + ["index", "layer"]
    assert layout.refs().keys() == {"kept:1"}
    assert [e["digest"] for e in layout.read_index()["manifests"]] == [kept.digest, sbom.digest]
    assert (home.layers / kept_layer.hex).is_dir() and not (home.layers / gone_layer.hex).exists()
    left = {p.name for p in layout.blobs.iterdir()}
    assert kept.hex in left and kept_layer.hex in left and sbom.hex in left
    assert gone.hex not in left and gone_layer.hex not in left and orphan.hex not in left
    assert gc.sweep_store(home, layout, dry_run=False) == []


def test_a_dead_owners_folder_goes_with_the_process_still_in_it(tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    live = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(builds), "live-"], stdout=subprocess.PIPE, text=True
    )
    dead = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(builds), "dead-"], stdout=subprocess.PIPE, text=True
    )
    assert live.stdout is not None and dead.stdout is not None
    live_dir = Path(live.stdout.readline().strip())
    dead_dir = Path(dead.stdout.readline().strip())
    (dead_dir / "work").mkdir()
    # a process the dead owner left working in its folder (as nspawn would be)
    straggler = subprocess.Popen(["sleep", "60"], cwd=dead_dir / "work")
    try:
        dead.kill()
        dead.wait()
        assert locks.is_abandoned(dead_dir) and not locks.is_abandoned(live_dir)
        [listed] = gc.sweep_owned(builds, "build", dry_run=True)
        assert listed.path == str(dead_dir) and listed.processes == [straggler.pid]
        assert straggler.poll() is None and dead_dir.is_dir()

        [item] = gc.sweep_owned(builds, "build", dry_run=False)
        assert item.path == str(dead_dir) and straggler.pid in item.processes
        assert straggler.wait(timeout=5) == -9
        assert not dead_dir.exists() and live_dir.is_dir()
        assert gc.sweep_owned(builds, "build", dry_run=False) == []
    finally:
        for child in (live, dead, straggler):
            child.kill()
            child.wait()


def test_a_partial_blob_of_a_dead_writer_is_abandoned_and_a_live_one_is_not(
    tmp_path: Path,
) -> None:
    home, layout = store(tmp_path)
    writer = layout.writer(home.tmp)
    writer.write(b"half a layer")
    [partial] = list(home.tmp.iterdir())
    assert not locks.is_abandoned(partial)
    assert gc.sweep_owned(home.tmp, "tmp", dry_run=False) == []
    writer._held.release()  # what the kernel does when the writer dies
    [item] = gc.sweep_owned(home.tmp, "tmp", dry_run=False)
    assert item.path == str(partial) and not partial.exists()


def test_a_blob_is_read_as_json_loads_reads_it(tmp_path: Path) -> None:
    """Manifests are parsed without json.loads' encoding guess when they are UTF-8 that
    starts with ``{``: every other document, and every error, stays json.loads' own."""
    _home, layout = store(tmp_path)
    samples = [
        b'{"a": [1, "\\u00e9", "\xc3\xa9"]}',
        b'{"a": 1}  \n',
        b'{"a": 1} {"b": 2}',  # extra data
        b'{"a": "\xed\xa0\x80"}',  # a lone surrogate, which json.loads lets through
        b'{"a": "\xff"}',  # no UTF-8
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
        '{"a": 1}'.encode("utf-16-le"),
        '{"a": 1}'.encode("utf-16"),
        b"[1, 2]",
        b"{",
        b"{}",
        b"",
    ]
    with gc.BlobDir(layout) as blobs:
        for number, data in enumerate(samples):
            name = f"{number:064x}"
            (layout.blobs / name).write_bytes(data)
            try:
                want: object = json.loads(data)
            except ValueError as exc:
                want = type(exc)
            try:
                got: object = blobs.read_json(f"sha256:{name}", len(data))
            except ValueError as exc:
                got = type(exc)
            assert got == want, data


def test_a_manifest_tagged_twice_keeps_its_blobs_while_one_tag_stays(tmp_path: Path) -> None:
    home, layout = store(tmp_path)
    manifest, layer = image(layout, "both")
    layout.tag("a:1", manifest)
    layout.tag("b:1", manifest)
    blobs, diff_ids, stale = gc.referenced(layout, dropped={"a:1"})
    assert {manifest.digest, layer.digest} <= blobs and diff_ids == {layer.digest}
    assert stale == []
    blobs, diff_ids, _stale = gc.referenced(layout, dropped={"a:1", "b:1"})
    assert blobs == set() and diff_ids == set()
    going = gc.sweep_store(home, layout, dry_run=True, dropped={"a:1"})
    assert going == []


def test_a_blob_that_went_meanwhile_takes_no_bytes(tmp_path: Path) -> None:
    _home, layout = store(tmp_path)
    kept = layout.put_bytes(b"x" * 5000, MEDIA_LAYER)
    with gc.BlobDir(layout) as blobs:
        sizes = blobs.blocks([kept.hex, "0" * 64, kept.hex])
    on_disk = os.lstat(layout.blobs / kept.hex).st_blocks * 512
    assert sizes == [on_disk, 0, on_disk] and on_disk > 0
