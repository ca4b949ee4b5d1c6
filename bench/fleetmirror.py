"""A loopback apt mirror for the fleet bench: served, throttled, refused, republished.

One suite, ``fleet``, with ``dists/fleet/Release`` naming its Packages index by hash
(``Acquire-By-Hash: yes``, as Debian's mirrors do): a republished index is a new Release
file beside content-addressed Packages files, so an apt that read the old Release still
gets the Packages file it names. The .debs in ``pool/`` are hard links to the package
cache's files (``$KILN_HOME/cache/debs/by-name``, kiln.bake.debcache) plus any the bench
builds (tests.integration.aptrepo.build_deb).

``rate`` throttles the whole mirror, every connection together, with one token bucket on
the bytes it writes. ``refused()`` is a 127.0.0.1 port nothing listens on. ``publish_after``
republishes the index with more .debs once that many clients have asked for the Release
file: they get the old one, every later client the new one.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.aptrepo import host_arch, paragraph

SUITE = "fleet"
CHUNK = 16 * 1024


class Bucket:
    """A shared pacer: each write waits until the mirror's rate has room for it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.lock = threading.Lock()

    def take(self, size: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.free_at)
            self.free_at = start + size / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)


@dataclass
class Mirror:
    root: Path
    arch: str = field(default_factory=host_arch)
    port: int = 0
    debs: list[Path] = field(default_factory=list)
    paragraphs: dict[Path, str] = field(default_factory=dict)
    releases_served: int = 0
    publish_after: int = 0  # republish for the Release request after this many
    pending: list[Path] = field(default_factory=list)  # .debs the republication adds
    published_at: float | None = None  # time.monotonic() of the republication
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def line(self) -> str:
        return f"deb [trusted=yes] {self.url} {SUITE} main"

    def add(self, debs: list[Path]) -> None:
        """Link ``debs`` into the pool (read where they are; linked, not copied)."""
        pool = self.root / "pool"
        pool.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            target = pool / deb.name
            if not target.exists():
                try:
                    os.link(deb, target)
                except OSError:  # another file system
                    shutil.copyfile(deb, target)
            if target not in self.paragraphs:
                self.paragraphs[target] = paragraph(target, f"pool/{target.name}")
                self.debs.append(target)

    def index(self) -> None:
        """Write the Packages files under their hashes, then the Release file naming them
        (renamed into place: a reader sees the old file or the new one)."""
        packages = "\n".join(self.paragraphs[d] for d in sorted(self.debs)).encode()
        binary = self.root / "dists" / SUITE / "main" / f"binary-{self.arch}"
        by_hash = binary / "by-hash" / "SHA256"
        by_hash.mkdir(parents=True, exist_ok=True)
        sums = []
        for name, data in (("Packages", packages), ("Packages.gz", gzip.compress(packages, 1))):
            digest = hashlib.sha256(data).hexdigest()
            (by_hash / digest).write_bytes(data)
            tmp = binary / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, binary / name)
            sums.append(f" {digest} {len(data)} main/binary-{self.arch}/{name}")
        date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
        release = (
            f"Origin: kiln-bench\nLabel: kiln-bench\nSuite: {SUITE}\nCodename: {SUITE}\n"
            f"Date: {date}\nArchitectures: {self.arch}\nComponents: main\n"
            "Acquire-By-Hash: yes\nSHA256:\n" + "\n".join(sums) + "\n"
        )
        dists = self.root / "dists" / SUITE
        tmp = dists / ".Release.tmp"
        tmp.write_text(release)
        os.replace(tmp, dists / "Release")

    def arrived(self) -> None:
        """A Release request arrived (called under ``lock``): the first after
        ``publish_after`` of them republishes the index before it is answered."""
        self.releases_served += 1
        if self.pending and self.releases_served == self.publish_after + 1:
            self.add(self.pending)
            self.index()
            self.pending = []
            self.published_at = time.monotonic()


class Handler(SimpleHTTPRequestHandler):
    """Files of the mirror's root; HTTP/1.1 so apt keeps its connection."""

    protocol_version = "HTTP/1.1"
    mirror: Mirror
    bucket: Bucket | None

    def __init__(self, *args: Any, mirror: Mirror, bucket: Bucket | None, **kw: Any) -> None:
        self.mirror = mirror
        self.bucket = bucket
        super().__init__(*args, directory=str(mirror.root), **kw)

    def do_GET(self) -> None:
        if not self.path.endswith(f"dists/{SUITE}/Release"):
            super().do_GET()
            return
        with self.mirror.lock:  # counted and opened in arrival order
            self.mirror.arrived()
            source = self.send_head()
        if source is not None:
            try:
                self.copyfile(source, self.wfile)
            finally:
                source.close()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while chunk := source.read(CHUNK):
            if self.bucket is not None:
                self.bucket.take(len(chunk))
            outputfile.write(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served(mirror: Mirror, rate: float | None = None) -> Iterator[Mirror]:
    """Serve ``mirror`` (indexed) on 127.0.0.1 for the block; ``rate``: bytes a second."""
    mirror.index()
    bucket = Bucket(rate) if rate else None
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, mirror=mirror, bucket=bucket))
    server.daemon_threads = True
    mirror.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()


def refused() -> str:
    """The sources line of a mirror on 127.0.0.1 that refuses connections: a port the
    kernel handed out and nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"deb [trusted=yes] http://127.0.0.1:{port}/ {SUITE} main"


def cached_debs(home: Path) -> list[Path]:
    """Every .deb in the package cache of KILN_HOME ``home``, under apt's names."""
    return sorted((home / "cache" / "debs" / "by-name").glob("*.deb"))
