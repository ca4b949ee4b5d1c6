"""kiln gc with a retention rule, for real: baked versions, a channel, a stopped machine and
a lineage; what stays (and why), what goes, and what gc leaves intact: fsck, the version
counter and the history."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from tests.integration.conftest import Kiln


def kept_reasons(data: dict[str, Any]) -> dict[str, list[str]]:
    return {row["ref"]: row["reasons"] for row in data["retention"]["kept"]}


def removed(data: dict[str, Any]) -> list[str]:
    return [item["path"] for item in data["items"] if item["kind"] == "version"]


def test_retention_keeps_heads_machines_and_ancestors_and_removes_the_rest(
    baked: Kiln, fresh: Kiln, examples: Path, tmp_path: Path
) -> None:
    # a base that boots, imported from the shared store's Debian base, and a child of it
    baked.run("export", "base:1", "--format", "rootfs-tar", "-o", str(tmp_path / "sys.tar"))
    (tmp_path / "sysbase.toml").write_text('[image]\nname = "sysbase"\nimport = "sys.tar"\n')
    (tmp_path / "box.toml").write_text(
        '[image]\nname = "box"\nparent = "sysbase"\n\n[[steps]]\nrun = "echo box > /etc/box"\n'
    )
    (tmp_path / "tinychild.toml").write_text(
        '[image]\nname = "tinychild"\nparent = "tiny:1"\n\n[[steps]]\nrun = "echo child > /child"\n'
    )
    tiny = str(examples / "tiny.toml")
    fresh.run("bake", tiny)
    for _ in range(4):
        fresh.run("bake", "--no-cache", tiny)  # tiny:2 .. tiny:5
    fresh.run("bake", str(tmp_path / "tinychild.toml"))  # on tiny:1
    fresh.run("promote", "tiny:2", "prod")
    fresh.run("bake", str(tmp_path / "sysbase.toml"))
    fresh.run("bake", str(tmp_path / "box.toml"))
    fresh.run("bake", "--no-cache", str(tmp_path / "box.toml"))  # box:2
    name = f"retained-{secrets.token_hex(3)}"
    try:
        fresh.run("run", "box:1", "--name", name, "--wait")
        fresh.run("stop", name)

        plain = fresh.run("gc", "--dry-run").stdout
        assert "no image version is removed" in plain
        dry = fresh.json("gc", "--dry-run", "--keep-last", "1")
        assert kept_reasons(dry) == {
            "box:1": [f"machine {name} runs it (stopped)"],
            "box:2": ["last 1 of box"],
            "sysbase:1": ["last 1 of sysbase", "ancestor of box:1", "ancestor of box:2"],
            "tiny:1": ["ancestor of tinychild:1"],
            "tiny:2": ["head of tiny:prod"],
            "tiny:5": ["last 1 of tiny"],
            "tinychild:1": ["last 1 of tinychild"],
        }
        assert removed(dry) == ["tiny:3", "tiny:4"]
        assert len(fresh.json("images")) == 9  # a dry run removes nothing

        done = fresh.json("gc", "--keep-last", "1")
        assert removed(done) == ["tiny:3", "tiny:4"] and done["removed"]["blob"] > 0
        listed = fresh.json("images")
        assert sorted(i["ref"] for i in listed if i["status"] == "ok") == sorted(kept_reasons(dry))
        assert [i["ref"] for i in listed if i["status"] == "removed"] == ["tiny:3", "tiny:4"]
        assert fresh.json("fsck")["ok"]
        fresh.run("start", name)  # the stopped machine's image is all there
        fresh.run("stop", name)

        # keep nothing by count: the head and the machine's chain still stay
        done = fresh.json("gc", "--keep-last", "0")
        assert removed(done) == ["box:2", "tiny:1", "tiny:5", "tinychild:1"]
        assert fresh.json("fsck")["ok"]
        assert fresh.json("bake", "--no-cache", tiny)["version"] == 6  # never 3, 4 or 5 again
        history = fresh.json("history", "tiny")
        assert [e["version"] for e in history if e["kind"] == "removed"] == [3, 4, 1, 5]
        assert [e["version"] for e in history if e["kind"] == "baked"] == [1, 2, 3, 4, 5, 6]
    finally:
        fresh.run("rm", "--force", "--volumes", name, check=False)
