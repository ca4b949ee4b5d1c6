"""Children whose output is a stream: proc.reading and proc.feeding drain stderr apart,
and a failure is an error with the child's last words (real tar, zstd and sh)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from kiln import proc
from kiln.errors import BadInput
from kiln.store.apply import apply_tar

NOISY = "i=0; while [ $i -lt 20000 ]; do echo warning number $i >&2; i=$((i+1)); done"


def test_reading_drains_stderr_while_the_block_reads_stdout() -> None:
    with proc.reading(["sh", "-c", NOISY + "; echo done"]) as child:
        assert child.stdout.read() == b"done\n"
    assert child.returncode == 0
    assert child.errors.splitlines()[-1] == "warning number 19999"
    assert len(child.errors.splitlines()) == proc.STDERR_KEEP  # the tail, not all of it


def test_a_failing_stream_raises_with_the_tail_of_its_stderr() -> None:
    with (
        pytest.raises(proc.CommandError, match="exit code 3") as caught,
        proc.reading(["sh", "-c", NOISY + "; echo half; echo broken >&2; exit 3"]) as child,
    ):
        assert child.stdout.read() == b"half\n"
    assert caught.value.output.endswith("broken\n")


def test_feeding_closes_stdin_and_takes_the_exit_code(tmp_path: Path) -> None:
    out = (tmp_path / "out").open("wb")
    with out, proc.feeding(["sh", "-c", "wc -c; " + NOISY], stdout=out) as child:
        child.stdin.write(b"x" * 100_000)
    assert (tmp_path / "out").read_text().strip() == "100000"
    out = (tmp_path / "out").open("wb")
    with out, proc.feeding(["sh", "-c", "echo no >&2; exit 4"], stdout=out, check=False) as child:
        pass
    assert (child.returncode, child.errors) == (4, "no\n")


def a_tar(members: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()


def zstd(data: bytes) -> bytes:
    return subprocess.run(
        ["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


def test_a_zstd_layer_is_applied(tmp_path: Path) -> None:
    tarball = tmp_path / "layer.tar.zst"
    tarball.write_bytes(zstd(a_tar({"etc/motd": b"hello\n"})))
    apply_tar(tarball, tmp_path / "root")
    assert (tmp_path / "root" / "etc" / "motd").read_bytes() == b"hello\n"


def test_a_zstd_layer_that_does_not_decompress_whole_is_refused(tmp_path: Path) -> None:
    """The tar inside is complete, so tarfile alone sees nothing wrong: only zstd's exit
    code says that what follows it is broken."""
    tarball = tmp_path / "layer.tar.zst"
    tarball.write_bytes(zstd(a_tar({"etc/motd": b"hello\n"})) + b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    with pytest.raises(BadInput, match="does not decompress: zstd exited 1") as caught:
        apply_tar(tarball, tmp_path / "root")
    assert caught.value.hint and "zstd -t" in caught.value.hint
