"""An image with cloud-init boots healthy and takes kiln's NoCloud seed, every module on.

cloud-init's locale module applies en_US.UTF-8 to an image whose /etc/default/locale sets
no LANG (minbase), and update-locale refuses a locale nobody generated: cloud-config.service
failed and the machine booted degraded. kiln's seed names the image's locale, or C.UTF-8.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Kiln


@pytest.fixture
def machine(baked: Kiln) -> Iterator[str]:
    name = f"ci-{secrets.token_hex(3)}"
    yield name
    baked.run("rm", "--force", "--volumes", name, check=False)


def inside(kiln: Kiln, name: str, *command: str) -> str:
    return kiln.run("exec", name, "--", *command).stdout


def test_cloud_init_consumes_the_seed_and_the_machine_runs(
    baked: Kiln, machine: str, tmp_path: Path
) -> None:
    recipe = tmp_path / "cloudy.toml"
    recipe.write_text(
        '[image]\nname = "cloudy"\nparent = "base"\n\n[packages]\napt = ["cloud-init"]\n'
    )
    ref = baked.json("bake", str(recipe))["ref"]

    baked.run("run", ref, "--name", machine, "--wait")  # --wait fails on degraded
    assert inside(baked, machine, "systemctl", "is-system-running").strip() == "running"
    status = inside(baked, machine, "cloud-init", "status", "--long")
    assert "status: done" in status and "DataSourceNoCloud" in status, status
    assert "/var/lib/cloud/seed/nocloud" in status

    # no module was turned off: the locale module ran, and wrote the seed's locale
    assert 'locale: "C.UTF-8"' in inside(baked, machine, "cloud-init", "query", "userdata")
    inside(baked, machine, "test", "-f", "/var/lib/cloud/instance/sem/config_locale")
    assert "LANG=C.UTF-8" in inside(baked, machine, "cat", "/etc/default/locale")
    result = json.loads(inside(baked, machine, "cat", "/run/cloud-init/result.json"))
    assert result["v1"]["errors"] == [], result
    disabled = inside(baked, machine, "sh", "-c", "ls /etc/cloud/cloud-init.disabled 2>&1; true")
    assert "No such file" in disabled

    # the host name is the seed's local-hostname, which cloud-init wrote to /etc/hostname
    assert inside(baked, machine, "cloud-init", "query", "local_hostname").strip() == machine
    assert inside(baked, machine, "cat", "/etc/hostname").strip() == machine
    assert inside(baked, machine, "hostname").strip() == machine
