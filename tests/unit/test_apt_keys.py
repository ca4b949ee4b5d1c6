"""Keys in apt sources as kiln outdated meets them: a deb822 Signed-By that holds the key
itself is kept as a keyring file of kiln's apt cache (the host's sources and an image's),
and a line whose keyring the image lacks is left out and said so, in the table and in
--json, with whether the host's sources stood in for the image's."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.app import freshness as app_freshness
from kiln.app.workspace import Workspace
from kiln.apt.image import Dropped, Layers, image_sources
from kiln.apt.sources import Source, host_sources, keep_inline_key, mirror_lines, parse
from kiln.errors import BadInput
from kiln.lifecycle import freshness
from tests.unit.lifecycle_rows import add_image, workspace

__all__ = ["workspace"]  # the fixture

KEY = (
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
    "\n"
    "mDMEZXXXXRYJKwYBBAHaRw8BAQdAkiln0000000000000000000000000000000000\n"
    "tBNraWxuIHRlc3RzIDx0QGxvY2FsPoiQBBMWCAA4FiEE\n"
    "=AbCd\n"
    "-----END PGP PUBLIC KEY BLOCK-----\n"
)


def stanza(uri: str, key: str = KEY, suites: str = "bookworm bookworm-security") -> str:
    """A deb822 stanza whose Signed-By holds ``key``, folded as sources.list(5) shows it."""
    folded = "".join(f" {line or '.'}\n" for line in key.splitlines())
    return f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By:\n{folded}"


def test_an_inline_key_is_read_whole_and_kept_as_an_armoured_keyring(tmp_path: Path) -> None:
    text = stanza("http://keyed.example/debian") + "\n" + stanza("http://two.example/", suites="x")
    sources = parse("keyed.sources", text)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://keyed.example/debian", "bookworm"),
        ("http://keyed.example/debian", "bookworm-security"),
        ("http://two.example/", "x"),
    ]
    assert all(s.signed_by == KEY and s.inline_key for s in sources)
    with pytest.raises(ValueError, match="inline"):
        sources[0].line()  # never one flattened line

    kept = keep_inline_key(sources[0], tmp_path / "keyrings")
    assert kept is not None
    path = tmp_path / "keyrings" / f"{hashlib.sha256(KEY.encode()).hexdigest()}.asc"
    assert kept.signed_by == str(path) and path.read_text() == KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert kept.line() == f"deb [signed-by={path}] http://keyed.example/debian bookworm main"
    # the same key again: the same file; a path or fingerprint is left as it is
    assert keep_inline_key(sources[1], tmp_path / "keyrings") == Source(
        "http://keyed.example/debian", "bookworm-security", ("main",), str(path)
    )
    assert os.listdir(tmp_path / "keyrings") == [path.name]
    plain = Source("http://d.example/", "b", ("main",), "/usr/share/keyrings/d.gpg")
    assert keep_inline_key(plain, tmp_path / "keyrings") is plain
    # a block that is not one armoured public key is no keyring
    for bad in (KEY.replace("PUBLIC KEY", "PRIVATE KEY"), KEY[:-40], KEY + KEY):
        [source] = parse("bad.sources", stanza("http://bad.example/", bad, "b"))
        assert keep_inline_key(source, tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


def test_the_host_s_inline_key_is_kept_in_the_cache_and_not_handed_to_a_bootstrap(
    tmp_path: Path,
) -> None:
    etc_apt = tmp_path / "apt"
    (etc_apt / "sources.list.d").mkdir(parents=True)
    (etc_apt / "sources.list.d" / "debian.sources").write_text(
        stanza("http://deb.debian.org/debian", suites="bookworm")
    )
    [source] = host_sources(etc_apt)
    assert source.signed_by == KEY
    kept = keep_inline_key(source, tmp_path / "cache" / "keyrings")
    assert kept is not None and kept.signed_by is not None
    assert Path(kept.signed_by).read_text() == KEY
    with pytest.raises(BadInput, match="1 with an inline Signed-By key left out") as caught:
        mirror_lines("trixie", None, etc_apt=etc_apt, codename="bookworm", lists=tmp_path)
    assert "keyring file" in (caught.value.hint or "")


def test_an_image_s_inline_key_is_kept_and_a_missing_keyring_is_noted(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    parts = root / "etc/apt/sources.list.d"
    parts.mkdir(parents=True)
    (parts / "keyed.sources").write_text(stanza("http://keyed.example/", suites="bookworm"))
    (parts / "gone.list").write_text(
        "deb [signed-by=/usr/share/keyrings/gone.gpg] http://gone.example/ bookworm main\n"
    )
    (parts / "bad.sources").write_text(stanza("http://bad.example/", KEY[:-40], "bookworm"))
    sources, files, dropped = image_sources(Layers([root]), tmp_path / "keyrings")
    [keyed] = sources
    assert keyed.uri == "http://keyed.example/" and keyed.signed_by is not None
    assert Path(keyed.signed_by).parent == tmp_path / "keyrings"
    assert Path(keyed.signed_by).read_text() == KEY
    assert dropped == [
        Dropped(
            "/etc/apt/sources.list.d/bad.sources", "inline", "deb http://bad.example/ bookworm main"
        ),
        Dropped(
            "/etc/apt/sources.list.d/gone.list",
            "/usr/share/keyrings/gone.gpg",
            "deb http://gone.example/ bookworm main",
        ),
    ]
    assert len(files) == 3


GONE = "deb [signed-by=/usr/share/keyrings/gone.gpg] http://127.0.0.1:9/gone bookworm main\n"


def test_outdated_says_which_line_it_left_out_and_that_the_host_s_sources_stood_in(
    workspace: Workspace,
) -> None:
    """An image whose only sources line names a keyring it does not hold is checked
    against the host's sources, and kiln outdated says so per line, in --json and in the
    table; an image that keeps another line is noted without the host's standing in."""
    alone = add_image(
        workspace,
        "alone",
        1,
        stored=True,
        files={"etc/apt/sources.list.d/gone.list": GONE.encode()},
    )
    both = add_image(
        workspace,
        "both",
        1,
        stored=True,
        files={
            "etc/apt/sources.list.d/gone.list": GONE.encode(),
            "etc/apt/sources.list.d/kept.list": b"deb [trusted=yes] http://127.0.0.1:9/k b main\n",
        },
    )
    data = app_freshness.outdated(workspace, ["alone", "both"], offline=True)
    by_ref = {image["ref"]: image for image in data["images"]}
    lone = by_ref[alone.ref]
    assert lone["sources"]["own"] is False
    assert lone["sources"]["lines"] == freshness.host_lines(workspace.home)
    [note] = lone["notes"]
    assert note["file"] == "/etc/apt/sources.list.d/gone.list"
    assert note["keyring"] == "/usr/share/keyrings/gone.gpg"
    assert note["source"] == "deb http://127.0.0.1:9/gone bookworm main"
    assert note["host_sources"] is True
    assert "host's sources instead" in note["message"]
    kept = by_ref[both.ref]
    assert kept["sources"]["own"] is True
    assert kept["sources"]["lines"] == ["deb [trusted=yes] http://127.0.0.1:9/k b main"]
    [note] = kept["notes"]
    assert note["host_sources"] is False and "host's" not in note["message"]

    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "KILN_POLICY")}
    env["KILN_HOME"] = str(workspace.home.root)
    run = [sys.executable, "-m", "kiln.cli.main", "outdated", "alone", "--offline"]
    table = subprocess.run(run, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert table.returncode == 0, table.stderr
    assert (
        f"{alone.ref}: note: /etc/apt/sources.list.d/gone.list: deb http://127.0.0.1:9/gone "
        "bookworm main names keyring /usr/share/keyrings/gone.gpg, which the image does not "
        "hold: the line was left out; the image names no other sources, so it was checked "
        "against the host's sources instead"
    ) in table.stdout
    as_json = subprocess.run(
        [*run, "--json"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    [image] = json.loads(as_json.stdout)["images"]
    assert image["notes"] == lone["notes"]
