"""The README's tour says what kiln prints and records today: the lock excerpt is a lock
kiln reads as it writes it, the package versions it shows agree from one command to the
next, the images table has the columns kiln images prints, and the secret kiln run reads
from a file is made before it is used."""

from __future__ import annotations

import re
from pathlib import Path

from kiln.recipe import lockfile

README = (Path(__file__).parents[2] / "README.md").read_text()


def block_after(command: str, count: int | None = None) -> list[str]:
    """The lines a console block shows after ``# COMMAND``: ``count`` of them, else up to
    the next prompt."""
    lines = README.splitlines()
    start = lines.index(f"# {command}") + 1
    if count is not None:
        return lines[start : start + count]
    out = []
    for line in lines[start:]:
        if line.startswith(("# ", "```")):
            break
        out.append(line)
    return out


def test_the_lock_excerpt_is_what_kiln_lock_writes(tmp_path: Path) -> None:
    excerpt = block_after("head -4 examples/web.toml.lock", 4)
    assert excerpt[0] == lockfile.HEADER.format(recipe="web.toml")
    path = tmp_path / "web.toml.lock"
    path.write_text("\n".join(excerpt) + "\n")
    lock = lockfile.parse(path)
    assert lock.render("web.toml").splitlines() == excerpt  # auto word and all
    [adduser] = lock.packages
    assert adduser.auto  # apt pulls adduser in as a dependency: kiln lock says auto
    made = block_after("kiln lock examples/")
    plural = r"created \S+ \((1 package|([02-9]|\d\d+) packages)\)"  # as kiln lock counts
    assert made and all(re.fullmatch(plural, line) for line in made), made


def test_the_versions_shown_agree_from_one_command_to_the_next() -> None:
    diffed = dict(re.findall(r"^\+ package (\S+) (\S+)$", README, re.MULTILINE))
    updated = re.search(r"`~ curl (\S+) -> (\S+) \(amd64\)`", README)
    assert updated is not None and diffed["curl"] == updated.group(1)
    counts = re.findall(r"\.toml\.lock \((\d+) packages?\)", README)
    table = block_after("kiln images")
    listed = {row.split()[0]: row.split() for row in table[1:]}
    assert [listed[ref][5] for ref in ("base:1", "tiny:1", "web:1")] == counts
    assert re.search(rf"^packages \({counts[2]}\)$", README, re.MULTILINE)


def test_the_images_table_has_the_columns_kiln_images_prints() -> None:
    from kiln.cli import build

    source = Path(build.__file__).read_text()
    columns = re.search(r'Table\("REF", (.*?), box=None\)', source)
    assert columns is not None
    expected = ["REF", *re.findall(r'"([A-Z]+)"', columns.group(1))]
    assert block_after("kiln images")[0].split() == expected


def test_the_token_file_is_made_before_kiln_run_reads_it() -> None:
    made = README.index("> api-token)")
    used = README.index("api_token=@api-token")
    assert made < used and "umask 077" in README[made - 80 : made]
