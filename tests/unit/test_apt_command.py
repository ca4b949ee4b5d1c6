"""The apt install a bake runs in its root: one shell line whose every word is quoted, so
each package and option reaches apt as exactly the argument it was."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from kiln.bake.packages import REPO, _apt_command
from kiln.sandbox import APT_OPTIONS


def test_every_word_reaches_apt_as_one_argument() -> None:
    options = ["-o", "Dir::Etc::SourceList=/run/kiln/repo/sources list"]
    packages = ["nginx-light", "libc6:amd64=2.36-9+deb12u1", "a;touch /tmp/x", "$(id)"]
    shell, flag, line = _apt_command(options, packages)
    assert (shell, flag) == ("/bin/sh", "-c")
    mkdir, update, install = (shlex.split(part) for part in line.split(" && "))
    assert mkdir == ["mkdir", "-p", f"{REPO}/lists/partial", f"{REPO}/archives/partial"]
    assert update == ["apt-get", *APT_OPTIONS, *options, "update"]
    assert install == ["apt-get", *APT_OPTIONS, *options, "install", "--yes", *packages]


def test_the_shell_hands_apt_the_same_words(tmp_path: Path) -> None:
    """Run by a real shell, with apt-get and mkdir standing in as printers of their argv."""
    for name in ("apt-get", "mkdir"):
        fake = tmp_path / name
        fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
        fake.chmod(0o755)
    packages = ["busybox-static", "x y", "'quoted'", "$(id)", "a;b"]
    shell, flag, line = _apt_command([], packages)
    done = subprocess.run(
        [shell, flag, line],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    words = done.stdout.splitlines()
    assert words[-len(packages) :] == packages
    assert words.count("update") == 1 and words.count("install") == 1
