"""A throw-away OCI registry (Debian's docker-registry) on a loopback port, with its own
config and storage, for benchmarks and tests that push and pull."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REGISTRY = "docker-registry"


class Missing(Exception):
    """docker-registry is not installed (scripts/setup installs it)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(
    folder: Path, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None
) -> Iterator[str]:
    """host:port of a registry keeping its blobs under ``folder``/registry, stopped after;
    ``tls``: its certificate and key files (HTTPS), ``htpasswd``: its logins (bcrypt)."""
    if shutil.which(REGISTRY) is None:
        raise Missing(f"{REGISTRY} is missing: run scripts/setup")
    port = free_port()
    storage = folder / "registry"
    storage.mkdir(parents=True)
    config = folder / "registry.yml"
    text = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if tls is not None:
        text += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    if htpasswd is not None:
        text += f"auth:\n  htpasswd:\n    realm: kiln-test\n    path: {htpasswd}\n"
    config.write_text(text)
    with (folder / "registry.log").open("wb") as log:
        server = subprocess.Popen(
            [REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        text = (folder / "registry.log").read_text()
                        raise RuntimeError(f"{REGISTRY} did not start:\n{text}") from None
                    time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=10)
