"""Generated recipes and lock files, valid and hostile, through the real loader and CLI.

Whatever the input, the outcome is a clean load or a RecipeError whose every problem names
its file and, once the TOML parsed, a line or a key path: never another exception. Memory
stays bounded (a resource limit in a child process) for inputs that would be endless.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import RecipeError
from kiln.recipe import load_recipe
from kiln.recipe.lockfile import Lock, parse

REPO = Path(__file__).resolve().parents[2]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
        derandomize=True,
    )


# Problems about the file as a whole: they need no line or key.
FILE_LEVEL = ("TOML", "not UTF-8", "is a", "is ", "the path", "the file", "grew", "... and")

# --- a small TOML writer (inline tables and arrays only: any value nests) ---


def toml_key(key: str) -> str:
    return json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are TOML escapes (a lone surrogate is not)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    """Top-level tables as [headers], arrays of tables as [[headers]], the rest inline."""
    lines: list[str] = []
    for table, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{toml_key(table)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items()]
        elif isinstance(body, list) and body and all(isinstance(b, dict) for b in body):
            for item in body:
                lines.append(f"[[{toml_key(table)}]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in item.items()]
        else:
            lines.insert(0, f"{toml_key(table)} = {toml_value(body)}")
    return "\n".join(lines) + "\n"


# --- strategies ---

INPUT_NAMES = ["ok.txt", "site", "pipe", "loop", "fifo-dir", "missing", "zero", "p.yml", "../x"]
KEYS = [
    "name",
    "parent",
    "import",
    "bootstrap",
    "source_date_epoch",
    "description",
    "apt",
    "run",
    "shell",
    "env",
    "copy",
    "to",
    "mode",
    "owner",
    "ansible",
    "extra_vars",
    "enable",
    "state",
    "config",
    "health",
    "timeout",
    "http",
    "commands",
    "paths",
    "required",
    "default",
    "secret",
]
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from([*INPUT_NAMES, "/", "/proc", "/var/lib/x", "30s", "0755", "tiny", "a\0b"]),
    st.sampled_from(
        ["tiny:99999999999999999999999", "tiny:01", "/proc/self/x", "1h", "9999999999999w", "true"]
    ),
    st.text(alphabet="ab\0/.\n", max_size=8),
    st.integers(min_value=60_000, max_value=70_000).map(lambda n: "x" * n),
)
integers = st.one_of(
    st.integers(min_value=-10, max_value=10),
    st.integers(min_value=2**62, max_value=2**66),
    st.just(-(2**63) - 1),
)
scalars = st.one_of(texts, integers, st.floats(allow_nan=True, allow_infinity=True), st.booleans())
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)
step = st.dictionaries(
    st.sampled_from(["run", "copy", "to", "ansible", "shell", "env", "mode", "extra_vars", "x"]),
    values,
    max_size=4,
)
image = st.fixed_dictionaries(
    {"name": st.one_of(st.just("fuzz"), texts)},
    optional={k: values for k in ("parent", "import", "source_date_epoch", "description")},
)
recipes = st.fixed_dictionaries(
    {"image": image},
    optional={
        "steps": st.lists(step, max_size=3),
        "packages": st.dictionaries(st.just("apt"), values),
        "runtime": st.dictionaries(st.sampled_from(["state", "config", "health"]), values),
        "tests": st.dictionaries(st.just("commands"), values),
        "seal": st.dictionaries(st.just("paths"), values),
        "extra": values,
    },
)


def deep(depth: int, kind: str) -> str:
    if kind == "array":
        return "x = " + "[" * depth + "]" * depth
    if kind == "inline":
        return "x = " + "{a = " * depth + "1" + "}" * depth
    return "[" + ".".join(["t"] * depth) + "]"


raw_texts = st.one_of(
    recipes.map(toml_document),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.builds(
        lambda d, k: '[image]\nname = "fuzz"\n' + deep(d, k),
        st.integers(min_value=1, max_value=3000),
        st.sampled_from(["array", "inline", "dotted"]),
    ),
    st.builds(lambda a, b: a[: len(a) // 2] + b, recipes.map(toml_document), st.text(max_size=30)),
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """A recipe folder with every kind of input a hostile recipe might name."""
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as name:
        base = Path(name)
        (base / "ok.txt").write_text("ok\n")
        (base / "p.yml").write_text("[]\n")
        (base / "site").mkdir()
        (base / "site" / "index.html").write_text("hi\n")
        os.mkfifo(base / "pipe")
        (base / "loop").symlink_to("loop")
        (base / "zero").symlink_to("/dev/zero")
        (base / "fifo-dir").mkdir()
        os.mkfifo(base / "fifo-dir" / "inner")
        yield base


def check_outcome(path: Path) -> None:
    try:
        load_recipe(path)
    except RecipeError as exc:
        assert exc.exit_code == 2
        assert exc.problems
        for problem in exc.problems:
            assert problem.file, problem
            if problem.file == str(path):
                assert problem.line or problem.path or problem.message.startswith(FILE_LEVEL), (
                    problem
                )


@fuzz(1000)
@given(text=raw_texts)
def test_any_recipe_loads_or_fails_with_located_problems(folder: Path, text: str) -> None:
    path = folder / "recipe.toml"
    try:
        path.write_text(text, errors="surrogatepass")
    except UnicodeEncodeError:
        return
    check_outcome(path)


@fuzz(300)
@given(data=st.binary(max_size=300))
def test_any_recipe_bytes_load_or_fail_cleanly(folder: Path, data: bytes) -> None:
    path = folder / "bytes.toml"
    path.write_bytes(data)
    check_outcome(path)


lock_lines = st.one_of(
    st.sampled_from(
        [
            "parent -",
            "parent sha256:" + "a" * 64,
            "source-date-epoch 1700000000",
            "source-date-epoch ²",
            "source-date-epoch 99999999999999999999",
            "package adduser all 3.134 " + "b" * 64,
            "package ../../etc/x all 1 " + "b" * 64,
            "package a amd64 1%2f " + "b" * 64,
            "# comment",
        ]
    ),
    st.text(max_size=60),
)


@fuzz(500)
@given(lines=st.lists(lock_lines, max_size=8), tail=st.binary(max_size=20))
def test_any_lock_file_parses_or_fails_with_line_numbers(
    folder: Path, lines: list[str], tail: bytes
) -> None:
    path = folder / "recipe.toml.lock"
    path.write_bytes("\n".join(lines).encode(errors="surrogatepass") + tail)
    try:
        lock = parse(path)
    except RecipeError as exc:
        assert exc.exit_code == 2 and exc.problems
        assert all(p.file == str(path) and p.line is not None for p in exc.problems)
    else:
        assert isinstance(lock, Lock)
        for deb in lock.packages:  # they become file names in the package cache
            assert "/" not in deb.filename and not deb.filename.startswith(".")
    finally:
        path.unlink()


@fuzz(4)
@given(document=recipes)
def test_the_cli_exits_2_with_a_location_or_bakes_nothing_heavy(document: dict[str, Any]) -> None:
    """kiln bake --json on a fresh KILN_HOME; the parent does not exist, so a recipe that
    loads stops at 'no such image' (exit 2) before anything runs."""
    document["image"]["parent"] = "no-such-parent"
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-cli-") as name:
        base = Path(name)
        recipe = base / "fuzz.toml"
        recipe.write_text(toml_document(document), errors="surrogatepass")
        result = subprocess.run(
            [sys.executable, "-m", "kiln.cli.main", "bake", "--json", str(recipe)],
            env={**os.environ, "KILN_HOME": str(base / "home")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "error:" in result.stderr
        assert str(recipe) in result.stderr or "no-such-parent" in result.stderr
        blobs = base / "home" / "oci" / "blobs"
        assert not any(p.is_file() for p in blobs.rglob("*")), "nothing is stored"


MEMORY_PROBE = """
import resource, sys
from pathlib import Path
limit = 768 << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from kiln.errors import RecipeError
from kiln.recipe import load_recipe
try:
    load_recipe(Path(sys.argv[1]))
except RecipeError as exc:
    print(exc.message)
    sys.exit(2)
print("loaded")
"""


@pytest.mark.parametrize("kind", ["dev-zero", "big", "fifo", "dev-urandom"])
def test_memory_stays_bounded_for_endless_or_huge_recipes(tmp_path: Path, kind: str) -> None:
    recipe = tmp_path / "huge.toml"
    if kind == "dev-zero":
        recipe.symlink_to("/dev/zero")
    elif kind == "dev-urandom":
        recipe.symlink_to("/dev/urandom")
    elif kind == "fifo":
        os.mkfifo(recipe)
    else:
        with recipe.open("wb") as out:
            out.write(b'[image]\nname = "big"\ndescription = """')
            out.truncate(100 << 20)  # 100 MB, sparse
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(recipe)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(recipe) in result.stdout
