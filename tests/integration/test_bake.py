"""Baking the examples for real: OCI validity, the cache, rebuilds, failures, exports."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.integration.conftest import EXAMPLES, Kiln


def skopeo_inspect(target: str) -> dict[str, object]:
    result = subprocess.run(
        ["skopeo", "inspect", target], capture_output=True, text=True, check=True
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_examples_are_valid_oci_images(baked: Kiln) -> None:
    images = {i["name"]: i for i in baked.json("images")}
    assert set(images) == {"tiny", "base", "web"}
    for name in ("tiny", "base", "web"):
        info = skopeo_inspect(f"oci:{baked.oci}:{name}:1")
        assert info["Digest"] == images[name]["digest"]
        labels = info["Labels"]
        assert isinstance(labels, dict)
        assert labels["org.kiln.name"] == name
        assert labels["org.kiln.cache-key"]
    web = skopeo_inspect(f"oci:{baked.oci}:web:1")
    base = skopeo_inspect(f"oci:{baked.oci}:base:1")
    assert isinstance(web["Layers"], list) and isinstance(base["Layers"], list)
    assert web["Layers"][:-1] == base["Layers"], "web is base plus exactly one layer"
    assert images["web"]["parent"] == "base:1"


def test_umoci_unpacks_web(baked: Kiln, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{baked.oci}:web:1", str(bundle)],
        check=True,
        capture_output=True,
    )
    root = bundle / "rootfs"
    assert "kiln image" in (root / "var/www/html/index.html").read_text()
    site = (root / "etc/nginx/sites-available/default").read_text()
    assert "Ansible managed" in site, "the playbook's template reached the image"
    assert "server_tokens off;" in (root / "etc/nginx/nginx.conf").read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/nginx.service").is_symlink()
    assert not (root / "root/.ansible").exists()
    assert not (root / "etc/resolv.conf").exists(), "nspawn's mount point was left behind"


def test_no_change_rebake_is_a_cache_hit(baked: Kiln) -> None:
    before = {i["ref"]: i["digest"] for i in baked.json("images")}
    results = baked.json("bake", str(EXAMPLES))
    assert all(r["cached"] for r in results)
    assert {r["ref"]: r["digest"] for r in results} == before
    assert {i["ref"] for i in baked.json("images")} == set(before), "no new versions"


def test_touching_a_copied_file_rebuilds_web_only(baked: Kiln, examples: Path) -> None:
    page = examples / "site" / "index.html"
    page.write_text(page.read_text().replace("kiln image", "kiln image, edited"))
    results = {r["name"]: r for r in baked.json("bake", str(examples))}
    assert results["base"]["cached"] and results["tiny"]["cached"]
    assert not results["web"]["cached"]
    new_ref = results["web"]["ref"]
    assert new_ref != "web:1"
    diff = baked.json("diff", "web:1", new_ref)
    assert diff["files"]["modified"] == ["/var/www/html/index.html"]
    assert diff["files"]["added"] == [] and diff["files"]["deleted"] == []
    assert diff["packages"] == {"added": [], "removed": [], "changed": []}
    lineage = baked.json("lineage", "base:1")
    children = {child["ref"] for child in lineage["descendants"]}
    assert {"web:1", new_ref} <= children


def test_bake_of_a_recipe_bakes_its_recipe_path_parent_first(baked: Kiln, tmp_path: Path) -> None:
    results = json.loads(baked.run("bake", str(EXAMPLES / "web.toml"), "--json").stdout)
    assert results["ref"].startswith("web:") and results["cached"]
    shown = baked.run("bake", str(EXAMPLES / "web.toml")).stdout.splitlines()
    # the session's store may hold later versions by now: the order is what counts
    answered = [(line.split()[0], line.split()[1].partition(":")[0]) for line in shown]
    assert answered == [("cached", "base"), ("cached", "web")]
    assert shown[1].split()[1] == results["ref"]

    # a real bake of both: the child's step reads what its parent's step wrote, so it only
    # passes when the parent was baked, and recorded, before it
    (tmp_path / "first.toml").write_text(
        '[image]\nname = "first"\nparent = "tiny:1"\n\n'
        '[[steps]]\nrun = "echo from first > /etc/first"\n'
    )
    (tmp_path / "second.toml").write_text(
        '[image]\nname = "second"\nparent = "first.toml"\n\n'
        '[[steps]]\nrun = "cat /etc/first > /etc/second"\n'
    )
    shown = baked.run("bake", str(tmp_path / "second.toml")).stdout.splitlines()
    assert [line.split()[:2] for line in shown] == [["baked", "first:1"], ["baked", "second:1"]]
    images = {i["ref"]: i for i in baked.json("images")}
    first, second = images["first:1"], images["second:1"]
    assert second["parent"] == "first:1"
    assert first["created"] <= second["created"]
    assert [p["ref"] for p in baked.json("inspect", "second:1")["parents"]] == ["first:1", "tiny:1"]


def test_inspect_shows_layers_parents_and_packages(baked: Kiln) -> None:
    data = baked.json("inspect", "web:1")
    assert [p["ref"] for p in data["parents"]] == ["base:1"]
    assert len(data["layers"]) == 2 and all(layer["size"] > 0 for layer in data["layers"])
    names = {p["name"] for p in data["packages"]}
    assert {"nginx-light", "python3", "systemd"} <= names
    assert data["labels"]["org.kiln.parent.digest"] == baked.json("inspect", "base:1")["digest"]


def test_diff_base_web_lists_packages_and_files(baked: Kiln) -> None:
    diff = baked.json("diff", "base:1", "web:1")
    added = {p["name"] for p in diff["packages"]["added"]}
    assert "nginx-light" in added
    assert "/var/www/html/index.html" in diff["files"]["added"]


def test_failed_step_reports_and_leaves_nothing(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "broken.toml"
    recipe.write_text(
        '[image]\nname = "broken"\nparent = "tiny:1"\n\n'
        '[[steps]]\nrun = "echo about to fail; exit 3"\n'
    )
    before = (baked.oci / "index.json").read_text()
    result = baked.run("bake", str(recipe), check=False)
    assert result.returncode == 1
    assert f"{recipe}:5" in result.stderr
    assert "exit code 3" in result.stderr and "about to fail" in result.stderr
    assert "echo about to fail; exit 3" in result.stderr
    assert (baked.oci / "index.json").read_text() == before
    assert not list((baked.home / "builds").iterdir())
    assert "broken" not in {i["name"] for i in baked.json("images")}

    kept = baked.run("bake", str(recipe), "--on-error=keep", check=False)
    assert kept.returncode == 1 and "kept the build root" in kept.stderr
    [build] = list((baked.home / "builds").iterdir())
    root = build / "root"
    assert root.is_mount() and (root / "bin/busybox").exists()
    subprocess.run(["umount", str(root)], check=True)
    subprocess.run(["rm", "-rf", str(build)], check=True)


def test_deletions_become_whiteouts(baked: Kiln, tmp_path: Path) -> None:
    recipe = tmp_path / "slim.toml"
    recipe.write_text(
        '[image]\nname = "slim"\nparent = "tiny"\n\n'
        '[[steps]]\nrun = "rm /usr/local/bin/hello && rm -r /usr/share/doc"\n'
    )
    result = json.loads(baked.run("bake", str(recipe), "--json").stdout)
    data = baked.json("inspect", result["ref"])
    top = data["layers"][-1]["digest"].split(":")[1]
    with tarfile.open(baked.oci / "blobs" / "sha256" / top) as layer:
        names = layer.getnames()
    assert "./usr/local/bin/.wh.hello" in names
    assert "./usr/share/.wh.doc" in names
    diff = baked.json("diff", "tiny", result["ref"])
    assert "/usr/local/bin/hello" in diff["files"]["deleted"]
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{baked.oci}:{result['ref']}", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert not (bundle / "rootfs/usr/local/bin/hello").exists()
    assert (bundle / "rootfs/bin/busybox").exists()


def test_export_and_import_round_trip(baked: Kiln, tmp_path: Path) -> None:
    archive = tmp_path / "tiny-oci.tar"
    rootfs = tmp_path / "tiny-root.tar"
    baked.run("export", "tiny", "--format", "oci-archive", "-o", str(archive))
    baked.run("export", "tiny", "--format", "rootfs-tar", "-o", str(rootfs))
    info = skopeo_inspect(f"oci-archive:{archive}")
    assert info["Digest"] == baked.json("inspect", "tiny")["digest"]
    with tarfile.open(rootfs) as tar:
        assert "./bin/busybox" in tar.getnames()
    for name, source in (("from-rootfs", rootfs), ("from-oci", archive)):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(f'[image]\nname = "{name}"\nimport = "{source.name}"\n')
        result = json.loads(baked.run("bake", str(recipe), "--json").stdout)
        diff = baked.json("diff", "tiny", result["ref"])
        assert diff["files"] == {"added": [], "modified": [], "deleted": []}, name


def test_fsck_passes_then_catches_a_corrupt_blob(fresh: Kiln) -> None:
    fresh.run("bake", str(EXAMPLES / "tiny.toml"))
    assert fresh.json("fsck")["ok"]
    layer = fresh.json("inspect", "tiny")["layers"][0]["digest"].split(":")[1]
    blob = fresh.oci / "blobs" / "sha256" / layer
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = fresh.run("fsck", check=False)
    assert result.returncode == 1
    assert f"blob {layer} is corrupt" in result.stdout


def test_no_cache_rebuilds_tiny_with_a_new_version(fresh: Kiln) -> None:
    first = fresh.json("bake", str(EXAMPLES / "tiny.toml"))
    second = fresh.json("bake", str(EXAMPLES / "tiny.toml"), "--no-cache")
    assert not second["cached"] and second["version"] == first["version"] + 1


AGAIN = """[image]
name = "again"
source_date_epoch = 1700000000

[[steps]]
copy = "hello"
to = "/hello"
"""


def test_a_bake_of_an_existing_versions_bytes_adds_no_copy(fresh: Kiln, tmp_path: Path) -> None:
    """A stamped scratch image (reproducible): --no-cache that makes the newest version's
    bytes adds nothing and says so; a bake whose key names an older version makes its bytes
    the newest again, under a new number; revoked bytes are never made again."""
    recipe = tmp_path / "again.toml"
    recipe.write_text(AGAIN)
    hello = tmp_path / "hello"
    hello.write_text("kiln\n")
    first = fresh.json("bake", str(recipe))
    same = " ".join(fresh.run("bake", str(recipe), "--no-cache").stdout.split())
    assert f"baked {first['ref']} {first['digest'][:19]}" in same
    assert f"(the same bytes as {first['ref']}: no new version)" in same

    hello.write_text("changed\n")
    second = fresh.json("bake", str(recipe))
    hello.write_text("kiln\n")  # back to what the first version was baked from
    back = fresh.json("bake", str(recipe))
    assert back["cached"] and back["again_of"] == first["ref"] and back["digest"] == first["digest"]
    assert back["version"] == second["version"] + 1
    newest = fresh.json("inspect", "again")
    assert (newest["ref"], newest["digest"]) == (back["ref"], first["digest"])

    fresh.run("revoke", first["ref"], "--reason", "CVE-0000-0001")  # the bytes: both numbers
    refused = fresh.run("bake", str(recipe), check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"these inputs make {back['ref']}" in refused.stderr
    assert f"revoked through {first['ref']}" in refused.stderr
    refused = fresh.run("bake", str(recipe), "--no-cache", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "these inputs make the bytes of" in refused.stderr
    assert f"revoked through {first['ref']}" in refused.stderr


QUICK_PROBE = """
import json, sys
from kiln.cli.main import main
sys.argv = ["kiln", "bake", "--json", sys.argv[1]]
try:
    main()
finally:
    heavy = ("sqlalchemy", "pydantic", "kiln.recipe.models", "kiln.bake.build")
    print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def test_no_change_rebake_loads_neither_the_models_nor_sqlalchemy(baked: Kiln) -> None:
    """A cache hit is answered from the memos and the catalog's plain-SQL lookup."""
    baked.run("bake", str(EXAMPLES))  # leaves the memos, if an older bake did not
    done = subprocess.run(
        [sys.executable, "-c", QUICK_PROBE, str(EXAMPLES)],
        env=baked.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(done.stdout)
    assert all(r["cached"] for r in results)
    images = {i["ref"]: i for i in baked.json("images")}
    assert {r["ref"] for r in results} <= images.keys()
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
