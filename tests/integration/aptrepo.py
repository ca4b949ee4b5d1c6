"""A small apt repository on loopback, with real suites, for freshness and refresh tests.

``bookworm`` and ``bookworm-security``, each with ``dists/<suite>/Release`` (Origin,
Label, Suite, Codename, Architectures, Components, the SHA256 of its Packages files) and
``dists/<suite>/main/binary-<arch>/Packages`` (and ``Packages.gz``), the .debs in
``pool/`` built by dpkg-deb. The Release files are not signed: sources lines name the
repository ``[trusted=yes]``; ``served(root, signed=True)`` signs each suite's InRelease
too, with a key of its own (``repo.signer.armoured``, a throw-away GNUPGHOME). Served by a
ThreadingHTTPServer on 127.0.0.1 at a random port, so test traffic stays on this machine.

    with served(tmp_path / "repo") as repo:
        repo.add("bookworm", "kiln-demo", "1.0")
        recipes = write_recipes(tmp_path / "recipes", repo, ["kiln-demo"])
        ...
        repo.add("bookworm-security", "kiln-demo", "1.0+deb12u1")   # reindexed at once
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SUITES = {
    "bookworm": {"Origin": "Debian", "Label": "Debian", "Suite": "stable"},
    "bookworm-security": {
        "Origin": "Debian",
        "Label": "Debian-Security",
        "Suite": "stable-security",
    },
}


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def build_deb(folder: Path, package: str, version: str, arch: str = "all") -> Path:
    """A real .deb of ``package`` ``version`` holding /usr/share/<package>/VERSION."""
    tree = folder / f".{package}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: kiln tests <tests@localhost>\nDescription: a package for freshness tests\n"
    )
    (tree / f"usr/share/{package}").mkdir(parents=True)
    (tree / f"usr/share/{package}/VERSION").write_text(version + "\n")
    deb = folder / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return deb


def paragraph(deb: Path, filename: str) -> str:
    """The Packages paragraph of ``deb``, found at ``filename`` below the repository."""
    control = subprocess.run(
        ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True
    ).stdout.strip()
    data = deb.read_bytes()
    return (
        f"{control}\nFilename: {filename}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
    )


@dataclass
class Signer:
    """A signing key in a GNUPGHOME of its own (short, in /tmp: gpg-agent's socket lives
    there), and its public half, armoured."""

    home: Path
    armoured: str

    @classmethod
    def make(cls) -> Signer:
        home = Path(tempfile.mkdtemp(prefix="kiln-gpg-"))
        cls._gpg(home, "--passphrase", "", "--quick-gen-key", "kiln tests <t@localhost>",
                 "ed25519", "sign", "never")  # fmt: skip
        armoured = cls._gpg(home, "--armor", "--export").decode()
        return cls(home, armoured)

    @staticmethod
    def _gpg(home: Path, *args: str, stdin: bytes = b"") -> bytes:
        return subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
            input=stdin,
            capture_output=True,
            check=True,
        ).stdout

    def clearsign(self, data: bytes) -> bytes:
        return self._gpg(self.home, "--clearsign", "--digest-algo", "SHA256", stdin=data)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class AptRepo:
    root: Path
    arch: str = field(default_factory=host_arch)
    port: int = 0
    debs: dict[str, list[Path]] = field(default_factory=dict)  # suite -> its .debs
    stamp: float = 0.0  # the mtime the last index was given
    signer: Signer | None = None  # signs each InRelease

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def line(self, suite: str) -> str:
        return f"deb [trusted=yes] {self.url} {suite} main"

    def lines(self) -> list[str]:
        return [self.line(suite) for suite in SUITES]

    def add(self, suite: str, package: str, version: str, arch: str = "all") -> Path:
        """Put ``package`` ``version`` into ``suite`` (beside what it holds) and reindex."""
        pool = self.root / "pool" / "main" / package
        pool.mkdir(parents=True, exist_ok=True)
        deb = build_deb(pool, package, version, arch)
        self.debs.setdefault(suite, []).append(deb)
        self.index(suite)
        return deb

    def index(self, suite: str) -> None:
        paragraphs = []
        for deb in sorted(self.debs.get(suite, [])):
            paragraphs.append(paragraph(deb, str(deb.relative_to(self.root))))
        packages = "\n".join(paragraphs).encode()
        dists = self.root / "dists" / suite
        binary = dists / "main" / f"binary-{self.arch}"
        binary.mkdir(parents=True, exist_ok=True)
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        sums = []
        for name in ("Packages", "Packages.gz"):
            data = (binary / name).read_bytes()
            path = f"main/binary-{self.arch}/{name}"
            sums.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path}")
        fields = SUITES[suite]
        date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
        (dists / "Release").write_text(
            f"Origin: {fields['Origin']}\nLabel: {fields['Label']}\nSuite: {fields['Suite']}\n"
            f"Codename: {suite}\nDate: {date}\nArchitectures: {self.arch}\nComponents: main\n"
            "SHA256:\n" + "\n".join(sums) + "\n"
        )
        written = [dists / "Release", binary / "Packages", binary / "Packages.gz"]
        if self.signer is not None:
            (dists / "InRelease").write_bytes(
                self.signer.clearsign((dists / "Release").read_bytes())
            )
            written.append(dists / "InRelease")
        # a new index is a second newer than the one before: apt asks If-Modified-Since,
        # which HTTP answers to the second, so a change within the same second looks like
        # none
        self.stamp = max(time.time(), self.stamp + 1.0)
        for stamped in written:
            os.utime(stamped, (self.stamp, self.stamp))


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served(root: Path, signed: bool = False) -> Iterator[AptRepo]:
    """An empty repository with both suites, served on 127.0.0.1 for the block (``signed``:
    each suite's InRelease signed by a key made for it)."""
    root.mkdir(parents=True, exist_ok=True)
    repo = AptRepo(root, signer=Signer.make() if signed else None)
    try:
        for suite in SUITES:
            repo.index(suite)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
        repo.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield repo
        finally:
            server.shutdown()
            server.server_close()
    finally:
        if repo.signer is not None:
            repo.signer.close()


SOURCES_STEP = (
    "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"
    " && printf '%s\\n' {lines} > /etc/apt/sources.list.d/kiln-test.list"
)


def write_recipes(
    folder: Path,
    repo: AptRepo,
    packages: list[str],
    base: str = "fresh-base",
    app: str = "fresh-app",
    parent: str = "base",
) -> tuple[Path, Path]:
    """Two recipes: ``base`` on ``parent`` whose step makes the loopback repository the
    image's only apt sources (the parent's Debian sources removed), and ``app`` on it
    installing ``packages`` from there. Returns their paths (bake the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    quoted = " ".join(f"'{line}'" for line in repo.lines())
    step = SOURCES_STEP.format(lines=quoted).replace('"', '\\"')
    base_recipe = folder / f"{base}.toml"
    base_recipe.write_text(
        f'[image]\nname = "{base}"\nparent = "{parent}"\n\n[[steps]]\nrun = "{step}"\n'
    )
    app_recipe = folder / f"{app}.toml"
    listed = ", ".join(f'"{p}"' for p in packages)
    app_recipe.write_text(
        f'[image]\nname = "{app}"\nparent = "{base}.toml"\n\n[packages]\napt = [{listed}]\n'
    )
    return base_recipe, app_recipe
