"""Integration tier: real mmdebstrap, overlay mounts and systemd-nspawn, as root.

The examples are baked once per session into a shared KILN_HOME (a Debian bootstrap
costs tens of seconds); tests that change inputs work on a copy of the examples folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.postgres import Missing, Postgres, cluster
from bench.registry import Missing as NoRegistry
from bench.registry import serving

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOOLS = ("mmdebstrap", "systemd-nspawn", "skopeo", "umoci", "tar")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@dataclass
class Kiln:
    """Runs the kiln command line against one KILN_HOME, as a user would."""

    home: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kiln.cli.main", *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "KILN_HOME": str(self.home), "COLUMNS": "200"}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kiln {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    @property
    def oci(self) -> Path:
        return self.home / "oci"


@pytest.fixture(scope="session")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Kiln:
    """A store with tiny, base and web baked from the examples, shared by the session."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run scripts/setup")
    kiln = Kiln(tmp_path_factory.mktemp("kiln-home"))
    results = kiln.json("bake", str(EXAMPLES))
    assert {r["name"] for r in results} == {"tiny", "base", "web"}
    return kiln


@pytest.fixture
def machines(baked: Kiln) -> Iterator[list[str]]:
    """Names of machines a test makes; each is removed with its volumes afterwards, even
    when the test failed with the machine still running."""
    names: list[str] = []
    yield names
    for name in names:
        baked.run("rm", "--force", "--volumes", name, check=False)


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of the examples folder, for tests that change inputs."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target, symlinks=True)
    return target


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Kiln]:
    """An empty KILN_HOME of the test's own."""
    yield Kiln(tmp_path / "home")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """host:port of a registry of the test's own (storage in ``tmp_path``/registry)."""
    try:
        with serving(tmp_path) as address:
            yield address
    except NoRegistry as exc:
        pytest.fail(str(exc))


SKIP_IN_COPY = {"machines", "builds", "tmp", "cache", "layers", "store.id"}


def copy_home(source: Kiln, home: Path) -> Kiln:
    """A copy of ``source``'s store and catalog (unpacked layers hard-linked: nothing writes
    to them) with a store id of its own, for tests that sign, damage or share images."""
    home.mkdir(parents=True)
    for entry in sorted(source.home.iterdir()):
        if entry.name not in SKIP_IN_COPY:
            subprocess.run(["cp", "-a", "--", str(entry), str(home)], check=True)
    subprocess.run(["cp", "-al", "--", str(source.home / "layers"), str(home)], check=True)
    (home / "tmp").mkdir()
    return Kiln(home)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One cluster for the whole session (starting one costs a few seconds)."""
    try:
        with cluster() as running:
            yield running
    except Missing as exc:
        pytest.fail(str(exc))


APP_RECIPE = """\
[image]
name = "app"
parent = "base.toml"
description = "a fleet test image: healthy while /etc/app/ok exists"

[[steps]]
run = "mkdir -p /etc/app && echo {version} > /etc/app/version{healthy}"

[runtime]
state = ["/var/lib/app"]

[runtime.health]
command = "test -f /etc/app/ok"
timeout = "10s"
"""


@dataclass(frozen=True)
class AppImages:
    """Three versions of the family ``app`` (a child of base) in the session's store."""

    good: str  # app:N, healthy
    good2: str  # a later healthy version, other bytes
    bad: str  # a later version whose health check never passes
    digests: dict[str, str]  # ref -> manifest digest


@pytest.fixture(scope="session")
def app_images(baked: Kiln, tmp_path_factory: pytest.TempPathFactory) -> AppImages:
    """Fleet tests' images: boots in well under a second, no package of its own."""
    folder = tmp_path_factory.mktemp("app-recipes")
    shutil.copy(EXAMPLES / "base.toml", folder / "base.toml")
    refs: list[str] = []
    digests: dict[str, str] = {}
    for version, healthy in (("one", True), ("two", True), ("bad", False)):
        ok = " && touch /etc/app/ok" if healthy else ""
        (folder / "app.toml").write_text(APP_RECIPE.format(version=version, healthy=ok))
        results = baked.json("bake", str(folder / "app.toml"))
        listed = results if isinstance(results, list) else [results]
        app = next(r for r in listed if r["name"] == "app")
        refs.append(f"app:{app['version']}")
        digests[refs[-1]] = app["digest"]
    return AppImages(refs[0], refs[1], refs[2], digests)


@dataclass
class Host(Kiln):
    """A KILN_HOME of its own on the shared catalog."""

    url: str = ""

    def env(self) -> dict[str, str]:
        return {**super().env(), "KILN_CATALOG_URL": self.url}


class Workers:
    """`kiln worker` processes a test starts; each is killed and reaped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, host: Host, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"worker-{len(self.started)}.log").open("wb")
        child = subprocess.Popen(
            host.argv("worker", "--heartbeat", "1", "--check-every", "1", *args),
            env=host.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.started.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes]) -> int:
        child.send_signal(signal.SIGTERM)
        return child.wait(30)

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("worker-*.log")))

    def close(self) -> None:
        for child in self.started:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    made = Workers(tmp_path)
    try:
        yield made
    finally:
        made.close()


def until(what: str, check: Callable[[], Any], timeout: float, logs: Workers) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{logs.logs()}")
