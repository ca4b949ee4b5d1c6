"""No layer names the host it was baked on: not the checkout's path (kiln's virtualenv is
bound into ansible steps at that path), not KILN_HOME, not the host's name."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.conftest import REPO, Kiln

CHUNK = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# Files that name a host by design; a short host name (``vm``) is also a piece of base64 and
# of many words, so outside these it is looked for only when it is distinctive.
HOST_FILES = ("etc/hostname", "etc/hosts", "etc/mailname")
DISTINCTIVE = 8
# The folders nspawn makes to bind the controller's virtualenv at its host path; a top-level
# folder that every Debian root has anyway (a checkout under /tmp or /srv) is not one.
FHS = {"bin", "boot", "dev", "etc", "home", "lib", "media", "mnt", "opt", "proc", "root"}
FHS |= {"run", "sbin", "srv", "sys", "tmp", "usr", "var"}
VENV = Path(sys.prefix).parts[1:]
MOUNT_POINTS = {"/".join(VENV[:depth]) for depth in range(1, len(VENV) + 1)} - FHS


def word(text: str) -> re.Pattern[bytes]:
    return re.compile(rb"(?<![\w.-])" + re.escape(text.encode()) + rb"(?![\w-])")


def host_words(kiln: Kiln, hostname: str) -> dict[str, re.Pattern[bytes]]:
    """What must not appear, each as a whole word."""
    return {
        "repository path": word(str(REPO)),
        "KILN_HOME": word(str(kiln.home)),
        "host name": word(hostname),
    }


def layer_blobs(kiln: Kiln, ref: str) -> list[Path]:
    data = kiln.json("inspect", ref)
    return [
        kiln.oci / "blobs" / "sha256" / layer["digest"].split(":", 1)[1] for layer in data["layers"]
    ]


@contextmanager
def open_layer(blob: Path) -> Iterator[tarfile.TarFile]:
    """A layer tar as stored: plain or gzip (tarfile reads both), or zstd (through zstd)."""
    with blob.open("rb") as raw:
        if raw.read(4) != ZSTD_MAGIC:
            raw.seek(0)
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar
            return
    with subprocess.Popen(["zstd", "-dc", "--", str(blob)], stdout=subprocess.PIPE) as unzstd:
        assert unzstd.stdout is not None
        with tarfile.open(fileobj=unzstd.stdout, mode="r|") as tar:
            yield tar
    assert unzstd.returncode == 0


def findings(blob: Path, words: dict[str, re.Pattern[bytes]], hostname: str) -> list[str]:
    found = []
    everywhere = len(hostname) >= DISTINCTIVE
    with open_layer(blob) as tar:
        for member in tar:
            rel = member.name.removeprefix("./").rstrip("/")
            found += [
                f"{what} in the name {member.name}"
                for what, pattern in words.items()
                if pattern.search(b"/" + rel.encode())
            ]
            if rel in MOUNT_POINTS:
                found.append(f"a folder of the host's path to kiln's virtualenv: {member.name}")
            if not member.isfile():
                continue
            checked = words
            if not everywhere and rel not in HOST_FILES:
                checked = {what: p for what, p in words.items() if what != "host name"}
            handle = tar.extractfile(member)
            assert handle is not None
            overlap = b""
            while chunk := handle.read(CHUNK):
                window = overlap + chunk
                found += [
                    f"{what} in the content of {member.name}"
                    for what, pattern in checked.items()
                    if pattern.search(window)
                ]
                overlap = window[-256:]
    return sorted(set(found))


def test_no_layer_of_web_holds_a_host_path_or_name(baked: Kiln) -> None:
    hostname = socket.gethostname()
    words = host_words(baked, hostname)
    blobs = layer_blobs(baked, "web")
    assert len(blobs) == 2
    found = [f"{b.name[:12]}: {item}" for b in blobs for item in findings(b, words, hostname)]
    assert found == []


def test_a_layer_baked_under_a_distinctive_host_name_never_holds_it(
    baked: Kiln, examples: Path
) -> None:
    """The host name searched everywhere: web's own layer, baked under a name of its own."""
    hostname = "kiln-probe-builder"
    recipe = examples / "web.toml"
    recipe.write_text(recipe.read_text().replace('parent = "base.toml"', 'parent = "base"'))
    argv = baked.argv("bake", "--no-cache", "--json", str(recipe))
    result = subprocess.run(
        ["unshare", "--uts", "--", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *argv],
        env=baked.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ref = json.loads(result.stdout)["ref"]
    own = layer_blobs(baked, ref)[-1]
    assert findings(own, host_words(baked, hostname), hostname) == []
