"""Freshness without a network: Debian version order against dpkg itself, Release files
told apart, Packages indexes read within bounds and kept parsed, an image's sources read
from its layers as overlayfs merges them, first sightings recorded once, and the fresh gate
on a real SQLite catalog."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from kiln.app import lifecycle
from kiln.app.workspace import Workspace
from kiln.apt import indexes, versions
from kiln.apt import packages as packages_index
from kiln.apt.image import Layers, image_sources
from kiln.apt.indexes import View
from kiln.apt.release import MAX_RELEASE
from kiln.apt.release import parse as parse_release
from kiln.catalog import Image, Package
from kiln.catalog.freshness import Sighting
from kiln.catalog.lookup import ImageRow
from kiln.errors import BadInput, KilnError
from kiln.lifecycle import freshness
from tests.unit.lifecycle_rows import add_image, workspace, write_policy

__all__ = ["workspace"]  # the fixture

PAIRS = [
    ("1.0", "1.0~rc1"),
    ("1.0~rc1", "1.0~~"),
    ("1:0.9", "2.0"),
    ("2.36-9+deb12u10", "2.36-9+deb12u4"),
    ("1.0+deb12u1", "1.0"),
    ("1.0-1", "1.0"),
    ("1.0.1", "1.0+b1"),
    ("10", "9"),
    ("1.0a", "1.0"),
    ("1.0", "1.0"),
    ("0:1.0", "1.0"),
    ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12"),
]


def dpkg_says(a: str, op: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_version_order_is_dpkg_order(a: str, b: str) -> None:
    for x, y in ((a, b), (b, a)):
        order = versions.compare(x, y)
        assert (order > 0) == dpkg_says(x, "gt", y), (x, y)
        assert (order == 0) == dpkg_says(x, "eq", y), (x, y)
        assert (order < 0) == dpkg_says(x, "lt", y), (x, y)
    assert versions.newest(["1.0~rc1", "1.0", "1:0.1", "2.0"]) == "1:0.1"


def test_a_version_is_checked_where_it_is_read() -> None:
    assert versions.valid("1:2.36-9+deb12u4") and versions.valid("1.0~rc1")
    for bad in ("", "x1.0", "1.0 2", "a:1.0", "1" * 129, "1.0;rm"):
        assert not versions.valid(bad), bad


def release(label: str, suite: str, codename: str) -> bytes:
    return (
        f"Origin: Debian\nLabel: {label}\nSuite: {suite}\nCodename: {codename}\n"
        "Architectures: amd64\nComponents: main\nSHA256:\n abc 1 main/binary-amd64/Packages\n"
    ).encode()


def test_a_security_suite_is_told_by_its_release() -> None:
    assert parse_release(
        release("Debian-Security", "stable-security", "bookworm-security")
    ).security
    assert parse_release(release("Local", "mine", "bookworm-security")).security
    assert parse_release(release("Local", "stable-security", "x")).security
    plain = parse_release(release("Debian", "stable", "bookworm"))
    assert not plain.security and plain.name == "bookworm" and plain.origin == "Debian"
    signed = (
        b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        + release("Debian-Security", "oldstable-security", "bookworm-security")
        + b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    )
    parsed = parse_release(signed)
    assert parsed.security and parsed.codename == "bookworm-security"
    with pytest.raises(BadInput, match="larger than"):
        parse_release(b"x" * (MAX_RELEASE + 1))


def paragraph(name: str, version: str, arch: str = "amd64", sha: str = "a" * 64) -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Description: a long\n description\nFilename: pool/{name}_{version}_{arch}.deb\n"
        f"Size: 100\nSHA256: {sha}\n"
    )


def test_an_index_keeps_the_newest_of_each_and_skips_what_is_malformed() -> None:
    text = "\n".join(
        [
            paragraph("libc6", "2.36-9+deb12u4"),
            paragraph("libc6", "2.36-9+deb12u10"),
            paragraph("libc6", "2.36-9+deb12u7"),
            paragraph("tool", "1.0~rc1", "all"),
            paragraph("Bad_Name", "1.0"),
            paragraph("badver", "x1.0"),
            paragraph("badsha", "1.0", sha="zz"),
            "Package: evil\nVersion: 1.0\nArchitecture: all\nFilename: ../../etc/shadow\n",
            paragraph("long", "1.0")
            + "Description: "
            + "x" * (packages_index.MAX_LINE - len("Description: "))
            + "Version: 9.9\n",
        ]
    )
    found = packages_index.parse_packages(io.BytesIO(text.encode()), "Packages")
    assert set(found) == {"libc6", "tool", "long"}
    assert found["long"]["amd64"][0] == "1.0"  # not the Version in the long line's tail
    assert found["libc6"]["amd64"][0] == "2.36-9+deb12u10"
    assert found["tool"]["all"][0] == "1.0~rc1"


def test_an_index_past_its_bounds_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    many = "\n".join(paragraph(f"p{n}", "1.0") for n in range(20)).encode()
    monkeypatch.setattr(packages_index, "MAX_PARAGRAPHS", 10)
    with pytest.raises(BadInput, match="more than 10 paragraphs"):
        packages_index.parse_packages(io.BytesIO(many), "Packages")
    monkeypatch.setattr(packages_index, "MAX_PARAGRAPHS", 1000)
    monkeypatch.setattr(packages_index, "MAX_INDEX", 500)
    with pytest.raises(BadInput, match="larger than 500 bytes"):
        packages_index.parse_packages(io.BytesIO(many), "Packages")


LINES = (
    "deb [trusted=yes] http://127.0.0.1:9/ bookworm main",
    "deb [trusted=yes] http://127.0.0.1:9/ bookworm-security main",
)


def fake_fetch(root: Path, suites: dict[str, list[str]], at: datetime) -> View:
    """What a fetch of LINES leaves in the cache (lists, fetched.json), then its view."""
    folder = indexes.folder_of(root, LINES)
    lists = folder / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    targets = []
    for suite, packages in suites.items():
        stem = f"127.0.0.1:9_dists_{suite}_"
        label = "Debian-Security" if suite.endswith("-security") else "Debian"
        (lists / f"{stem}Release").write_bytes(release(label, suite, suite))
        index = lists / f"{stem}main_binary-amd64_Packages"
        index.write_text("\n".join(packages))
        targets.append(f"{index}\tmain/binary-amd64/Packages\tPackages\thttp://127.0.0.1:9/\tamd64")
    (folder / "fetched.json").write_text(
        json.dumps({"format": 1, "at": at.isoformat(), "targets": "\n".join(targets)})
    )
    view = indexes.build_view(folder, LINES)
    assert view is not None
    return view


def test_the_newest_wins_across_suites_and_a_warm_view_reads_no_index(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    view = fake_fetch(
        tmp_path,
        {
            "bookworm": [paragraph("libc6", "2.36-9+deb12u4"), paragraph("tool", "2.0", "all")],
            "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")],
        },
        now,
    )
    best = view.best("libc6", "amd64")
    assert best is not None and best.suite == "bookworm-security" and best.security
    assert best.url == "http://127.0.0.1:9/pool/libc6_2.36-9+deb12u10_amd64.deb"
    tool = view.best("tool", "amd64")
    assert tool is not None and tool.architecture == "all" and not tool.security
    assert view.best("libc6", "arm64") is None
    # a warm read: view.json alone, and a rebuilt view parses no index whose size and
    # mtime are what they were
    for index in (view.folder / "lists").glob("*Packages"):
        st = index.stat()
        index.write_bytes(b"#" * st.st_size)
        os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = indexes.view(tmp_path, list(LINES), 3600, now + timedelta(minutes=1))
    assert again is not None and again.best("libc6", "amd64") == best
    rebuilt = indexes.build_view(view.folder, LINES)
    assert rebuilt is not None and rebuilt.best("libc6", "amd64") == best
    assert indexes.cached(tmp_path, list(reversed(LINES))) is not None  # order is no key
    assert indexes.view(tmp_path, list(LINES), 3600, now, offline=True) is not None


def test_updates_compare_in_debian_order(tmp_path: Path) -> None:
    view = fake_fetch(
        tmp_path,
        {
            "bookworm": [
                paragraph("tilde", "1.0~rc2", "all"),
                paragraph("epoch", "2.0", "all"),
                paragraph("plain", "1.1"),
            ],
            "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")],
        },
        datetime.now(UTC),
    )
    installed = [
        ("tilde", "all", "1.0"),
        ("epoch", "all", "1:1.0"),
        ("plain", "amd64", "1.0"),
        ("libc6", "amd64", "2.36-9+deb12u4"),
        ("absent", "amd64", "1.0"),
    ]
    found = {u.package: u for u in freshness.updates(installed, view)}
    assert set(found) == {"plain", "libc6"}
    assert found["libc6"].security and not found["plain"].security
    assert found["libc6"].to_json()["available"] == "2.36-9+deb12u10"


def layer(tmp_path: Path, name: str, files: dict[str, bytes | str]) -> Path:
    root = tmp_path / name
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "whiteout":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    root.mkdir(parents=True, exist_ok=True)
    return root


ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="overlay whiteouts need mknod and trusted.* xattrs (root)"
)


@ROOT
def test_an_image_s_sources_are_its_merged_layers_never_the_host_s(tmp_path: Path) -> None:
    host_secret = tmp_path / "host.list"
    host_secret.write_text("deb http://host.invalid/ secret main\n")
    lower = layer(
        tmp_path,
        "lower",
        {
            "etc/apt/sources.list": "deb http://deb.example/debian bookworm main\n",
            "etc/apt/sources.list.d/old.list": "deb http://old.example/ bookworm main\n",
            "usr/share/keyrings/k.gpg": b"\x99keyring",
        },
    )
    upper = layer(
        tmp_path,
        "upper",
        {
            "etc/apt/sources.list": "whiteout",
            "etc/apt/sources.list.d/old.list": "whiteout",
            "etc/apt/sources.list.d/new.sources": (
                "Types: deb\nURIs: http://new.example/\nSuites: bookworm bookworm-security\n"
                "Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n"
            ),
            "etc/apt/sources.list.d/escape.list": f"->{host_secret}",
            "etc/apt/sources.list.d/local.list": "deb file:/etc/ ./\n",
            "etc/apt/sources.list.d/trusted.list": "deb [trusted=yes] http://t.example/ x main\n",
        },
    )
    sources, files, _dropped = image_sources(Layers([lower, upper]), tmp_path / "keyrings")
    lines = sorted(s.line() for s in sources)
    assert not any("deb.example" in line or "old.example" in line for line in lines)
    assert not any("host.invalid" in line or "file:" in line for line in lines)
    assert "deb [trusted=yes] http://t.example/ x main" in lines
    keyring = next(s.signed_by for s in sources if "new.example" in s.uri)
    assert keyring is not None and Path(keyring).parent == tmp_path / "keyrings"
    assert Path(keyring).read_bytes() == b"\x99keyring"
    assert {s.suite for s in sources if "new.example" in s.uri} == {
        "bookworm",
        "bookworm-security",
    }
    assert "/etc/apt/sources.list" not in files


@ROOT
def test_an_opaque_folder_hides_the_sources_below_it(tmp_path: Path) -> None:
    lower = layer(
        tmp_path,
        "lower",
        {
            "etc/apt/sources.list.d/old.list": "deb http://old.example/ bookworm main\n",
            "etc/apt/sources.list.d/kept.sources": "Types: deb\nURIs: http://x/\nSuites: y\n",
        },
    )
    middle = layer(
        tmp_path, "middle", {"etc/apt/sources.list.d/new.list": "deb http://new.example/ b main\n"}
    )
    os.setxattr(middle / "etc/apt/sources.list.d", "trusted.overlay.opaque", b"y")
    top = layer(
        tmp_path,
        "top",
        {"etc/apt/sources.list": "->sources.list.d/new.list", "etc/apt/sources.list.d/x": ""},
    )
    sources, files, _dropped = image_sources(Layers([lower, middle, top]), tmp_path / "keyrings")
    assert [s.uri for s in sources] == ["http://new.example/", "http://new.example/"]
    assert files == ["/etc/apt/sources.list", "/etc/apt/sources.list.d/new.list"]
    assert Layers([lower, middle, top]).listdir("etc/apt/sources.list.d") == ["new.list", "x"]


def packages(workspace: Workspace, image: ImageRow, rows: list[tuple[str, str, str]]) -> None:
    with workspace.catalog.session() as session:
        for name, arch, version in rows:
            session.add(Package(image_id=image.id, name=name, architecture=arch, version=version))


def sources_of(workspace: Workspace, image: ImageRow) -> None:
    """The image's sources as the first read of its layers keeps them."""
    path = freshness._sources_file(workspace.home, image.digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"format": freshness.SOURCES_FORMAT, "own": True, "lines": list(LINES), "files": []}
        )
    )


def test_first_sightings_are_recorded_once(workspace: Workspace) -> None:
    view = fake_fetch(
        freshness.cache_root(workspace.home),
        {"bookworm": [], "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")]},
        datetime.now(UTC),
    )
    found = freshness.updates([("libc6", "amd64", "2.36-9+deb12u4")], view)
    early = datetime.now(UTC) - timedelta(days=3)
    with workspace.catalog.session() as session:
        assert freshness.record(session, found, early) == 1
    with workspace.catalog.session() as session:
        freshness.record(session, found, datetime.now(UTC))  # a second time: no new row
    with workspace.catalog.reading() as session:
        rows = session.scalars(select(Sighting)).all()
    assert len(rows) == 1 and rows[0].security and rows[0].suite == "bookworm-security"
    seen = freshness.sightings(workspace.lookup)
    assert abs((seen[found[0].key] - early).total_seconds()) < 1


def test_the_fresh_gate(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        "[channels.dev]\n\n"
        '[channels.staging]\nmax_security_age = "7d"\n\n[channels.prod]\nmax_security_age = "1h"\n',
    )
    app = add_image(workspace, "app", 1)
    packages(workspace, app, [("libc6", "amd64", "2.36-9+deb12u4"), ("tool", "all", "1.0")])
    sources_of(workspace, app)
    refused = lifecycle.promote(workspace, "app:1", "prod", policy_file=policy)
    assert [o.gate for o in refused.unmet] == ["fresh"]
    assert "no Packages index" in refused.unmet[0].why

    fake_fetch(
        freshness.cache_root(workspace.home),
        {
            "bookworm": [paragraph("tool", "1.1", "all")],
            "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")],
        },
        datetime.now(UTC),
    )
    # pending, but never seen before: it is not old yet
    assert lifecycle.promote(workspace, "app:1", "prod", policy_file=policy).promoted
    view = indexes.cached(freshness.cache_root(workspace.home), list(LINES))
    assert view is not None
    found = freshness.updates([("libc6", "amd64", "2.36-9+deb12u4")], view)
    with workspace.catalog.session() as session:
        freshness.record(session, found, datetime.now(UTC) - timedelta(hours=2))
    app2 = add_image(workspace, "app", 2)
    packages(workspace, app2, [("libc6", "amd64", "2.36-9+deb12u4")])
    sources_of(workspace, app2)
    refused = lifecycle.promote(workspace, "app:2", "prod", policy_file=policy)
    assert [o.gate for o in refused.unmet] == ["fresh"]
    why = refused.unmet[0].why
    assert "libc6 2.36-9+deb12u4" in why and "2.36-9+deb12u10 from bookworm-security" in why
    assert "kiln refresh app" in why
    assert lifecycle.promote(workspace, "app:2", "staging", policy_file=policy).promoted
    # no gate without max_security_age; the tool update alone never fails it
    assert lifecycle.promote(workspace, "app:2", "dev", policy_file=policy).promoted
    with workspace.catalog.session() as session:
        session.execute(update(Sighting).values(first_seen=datetime.now(UTC)))
    assert lifecycle.promote(workspace, "app:2", "prod", policy_file=policy).promoted


def test_a_stale_index_cannot_pass_the_gate(workspace: Workspace, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, '[channels.prod]\nmax_security_age = "1h"\n')
    app = add_image(workspace, "app", 1)
    packages(workspace, app, [("libc6", "amd64", "2.36-9+deb12u10")])
    sources_of(workspace, app)
    fake_fetch(
        freshness.cache_root(workspace.home),
        {"bookworm": [], "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")]},
        datetime.now(UTC) - timedelta(hours=2),
    )
    refused = lifecycle.promote(workspace, "app:1", "prod", policy_file=policy)
    assert [o.gate for o in refused.unmet] == ["fresh"]
    assert "older than max_security_age 1h" in refused.unmet[0].why
    assert "kiln outdated app:1 --fetch" in refused.unmet[0].why


def test_a_repository_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    lines = ["deb [trusted=yes] http://127.0.0.1:9/ bookworm main"]  # discard: nobody listens
    with pytest.raises(KilnError, match="apt could not fetch") as caught:
        indexes.view(tmp_path, lines, 3600, datetime.now(UTC))
    assert "--offline" in (caught.value.hint or "")
    assert indexes.view(tmp_path, lines, 3600, datetime.now(UTC), offline=True) is None
    with pytest.raises(BadInput, match="not an apt sources line"):
        indexes.view(tmp_path, ["rm -rf /"], 3600, datetime.now(UTC))


def test_a_point_release_past_the_security_fix_is_still_a_security_update(
    workspace: Workspace, tmp_path: Path
) -> None:
    view = fake_fetch(
        freshness.cache_root(workspace.home),
        {
            "bookworm": [paragraph("libc6", "2.36-9+deb12u14")],
            "bookworm-security": [paragraph("libc6", "2.36-9+deb12u10")],
        },
        datetime.now(UTC),
    )
    [old] = freshness.updates([("libc6", "amd64", "2.36-9+deb12u4")], view)
    assert old.available.version == "2.36-9+deb12u14" and old.available.suite == "bookworm"
    assert old.security and old.fix is not None and old.fix.version == "2.36-9+deb12u10"
    assert old.to_json()["security_suite"] == "bookworm-security"
    [newer] = freshness.updates([("libc6", "amd64", "2.36-9+deb12u12")], view)
    assert not newer.security  # it holds the fix: what is left is a point release
    assert freshness.counts(
        [("libc6", "amd64", "2.36-9+deb12u4"), ("libc6", "amd64", "2.36-9+deb12u12")], view
    ) == (1, 1)
    # the gate measures from when the fix was first seen, not the point release
    with workspace.catalog.session() as session:
        freshness.record(session, [old], datetime.now(UTC) - timedelta(hours=2))
    with workspace.catalog.session() as session:
        session.execute(
            update(Sighting)
            .where(Sighting.suite == "bookworm")
            .values(first_seen=datetime.now(UTC))
        )
    policy = write_policy(tmp_path, '[channels.prod]\nmax_security_age = "1h"\n')
    app = add_image(workspace, "app", 1)
    packages(workspace, app, [("libc6", "amd64", "2.36-9+deb12u4")])
    sources_of(workspace, app)
    refused = lifecycle.promote(workspace, "app:1", "prod", policy_file=policy)
    assert [o.gate for o in refused.unmet] == ["fresh"]
    assert "2.36-9+deb12u10 from bookworm-security" in refused.unmet[0].why


def test_a_symlink_loop_or_a_huge_sources_file_is_bad_input(tmp_path: Path) -> None:
    looped = layer(tmp_path, "loop", {"etc/apt/sources.list": "->/etc/apt/sources.list"})
    with pytest.raises(BadInput, match="too many symlinks"):
        image_sources(Layers([looped]), tmp_path / "keyrings")
    huge = layer(tmp_path, "huge", {"etc/apt/sources.list": "#" * (2 << 20)})
    with pytest.raises(BadInput, match="larger than"):
        image_sources(Layers([huge]), tmp_path / "keyrings")


def test_gc_takes_the_cache_of_images_that_are_gone_and_only_that(
    workspace: Workspace,
) -> None:
    """kiln gc removes what kiln outdated keeps for images no longer in the catalog, and
    the indexes and keyrings only they used; the host's indexes and the kept images' stay."""
    from kiln.app.gc import collect_garbage

    home = workspace.home
    kept, gone = add_image(workspace, "kept", 1), add_image(workspace, "gone", 1)
    root = freshness.cache_root(home)
    keyring = root / "keyrings" / ("a" * 64 + ".gpg")
    other_key = root / "keyrings" / ("b" * 64 + ".gpg")
    own = [f"deb [signed-by={keyring}] http://127.0.0.1:9/debian bookworm main"]
    theirs = [f"deb [signed-by={other_key}] http://127.0.0.1:9/other bookworm main"]
    for image, lines in ((kept, own), (gone, theirs)):
        path = root / "images" / f"{image.digest.partition(':')[2]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"format": freshness.SOURCES_FORMAT, "own": True, "lines": lines, "files": []}
            )
        )
    for lines in (own, theirs, freshness.host_lines(home)):
        folder = indexes.folder_of(root, lines)
        folder.mkdir(parents=True)
        (folder / "view.json").write_text("{}")
    keyring.parent.mkdir(parents=True)
    for key in (keyring, other_key):
        key.write_bytes(b"key")
    with workspace.catalog.session() as session:  # the version gc let go earlier
        session.execute(delete(Image).where(Image.id == gone.id))

    going = set(freshness.unused(home, {kept.digest}))
    assert going == {
        root / "images" / f"{gone.digest.partition(':')[2]}.json",
        indexes.folder_of(root, theirs),
        other_key,
    }
    dry = collect_garbage(workspace, dry_run=True)
    assert {i.path for i in dry.report.items if i.kind == "apt-index"} == {str(p) for p in going}
    assert all(p.exists() for p in going)
    collect_garbage(workspace)
    assert not any(p.exists() for p in going)
    assert indexes.folder_of(root, own).is_dir() and keyring.is_file()
    assert indexes.folder_of(root, freshness.host_lines(home)).is_dir()
    assert freshness.cached_lines(home, kept.digest) == (own, True)


def kiln_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "KILN_POLICY")}
    env["KILN_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fetch_is_the_one_flag_that_fetches_the_indexes_now(tmp_path: Path) -> None:
    """kiln outdated --fetch, as kiln refresh --fetch; --refresh, its old name, still works
    (and says so), out of sight in the help."""
    from kiln.cli.main import cli

    home = tmp_path / "home"
    fetched = kiln_cli(home, "outdated", "--fetch")
    assert fetched.returncode == 0, fetched.stderr
    assert "0 images checked: none outdated" in fetched.stdout
    both = kiln_cli(home, "outdated", "--fetch", "--offline")
    assert both.returncode == 2 and "--fetch fetches and --offline never does" in both.stderr
    old = kiln_cli(home, "outdated", "--refresh", "--json")
    assert old.returncode == 0, old.stderr
    assert json.loads(old.stdout) == {"images": [], "outdated": 0}
    assert "--refresh is now called --fetch" in old.stderr
    for name in ("outdated", "refresh"):
        command = cli.load_all()[name]
        shown = {o for p in command.params if not getattr(p, "hidden", False) for o in p.opts}
        assert "--fetch" in shown and "--refresh" not in shown, name
