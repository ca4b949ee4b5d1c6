"""A machine does not depend on its caller's umask: web booted by a `kiln run --wait` started
under umask 077 comes up healthy, with `/` and its folders as they are under umask 022.

One boot; its machine is removed (volumes too), even when the test fails.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
from pathlib import Path

from tests.integration.conftest import Kiln


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_web_started_under_umask_077_is_healthy_and_readable(
    baked: Kiln, machines: list[str]
) -> None:
    name = f"umask-{secrets.token_hex(3)}"
    machines.append(name)
    argv = baked.argv(
        "run", "web", "--name", name, "--set", "site_title=Umask", "--set", "api_token=t0ken",
        "--wait", "--json",
    )  # fmt: skip
    result = subprocess.run(
        ["sh", "-c", 'umask 077 && exec "$@"', "sh", *argv],
        env=baked.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    launched = json.loads(result.stdout)
    assert launched["health"]["ok"], launched

    inside = baked.run("exec", name, "--", "stat", "-c", "%a %U", "/", "/run/kiln/config.env")
    assert inside.stdout.split("\n")[:2] == ["755 root", "644 root"], inside.stdout
    folder = baked.home / "machines" / name
    assert {part: mode(folder / part) for part in ("upper", "work", "config", "volumes")} == {
        "upper": 0o755,
        "work": 0o700,
        "config": 0o755,
        "volumes": 0o755,
    }
    assert mode(folder) == 0o755 and mode(folder / "config" / "seed") == 0o755
    for file in ("machine.json", "console.log", "config/config.env", "config/seed/user-data"):
        assert mode(folder / file) == 0o644, file
    [volume] = launched["volumes"].values()
    image_path = baked.run("exec", name, "--", "stat", "-c", "%a", "/var/lib/web").stdout.strip()
    assert f"{mode(Path(volume)):o}" == image_path, "a new volume has the image's mode"
    assert mode(Path(volume)) & 0o055 == 0o055, "a volume the machine's services can read"
