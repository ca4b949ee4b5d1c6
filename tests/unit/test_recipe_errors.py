"""Recipe validation: every problem reported at once, each with file, line and key path."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.types import Strict

from kiln import steps
from kiln.errors import BadInput, NotFound, Problem, RecipeError
from kiln.machines.contract import from_json
from kiln.recipe import CopyStep, RunStep, load_recipe
from kiln.recipe.keylines import LineIndex, format_path
from kiln.recipe.models import Recipe
from kiln.store.layout import Layout

HEADER = '[image]\nname = "web"\n'


def write(folder: Path, text: str, name: str = "recipe.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return caught.value.problems


def only(path: Path) -> Problem:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


def lines_of(text: str, needle: str) -> list[int]:
    """1-based numbers of the lines of ``text`` that contain ``needle``."""
    return [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]


def line_of(text: str, needle: str) -> int:
    """1-based line of the one line of ``text`` that contains ``needle``."""
    hits = lines_of(text, needle)
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# --- shape and values (the schema) ---


def test_unknown_key_reports_line_and_key_path(tmp_path: Path) -> None:
    text = HEADER + 'colour = "red"\n'
    path = write(tmp_path, text)
    problem = only(path)
    assert problem.path == "image.colour"
    assert problem.line == 3
    assert problem.file == str(path)
    assert "unknown key" in problem.message


def test_unknown_top_level_table(tmp_path: Path) -> None:
    text = HEADER + "\n[pakages]\napt = []\n"
    problem = only(write(tmp_path, text))
    assert problem.path == "pakages"
    assert problem.line == line_of(text, "[pakages]")


def test_wrong_type_apt_as_string(tmp_path: Path) -> None:
    text = HEADER + '\n[packages]\napt = "nginx"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "packages.apt"
    assert problem.line == line_of(text, "apt =")
    assert "tuple" in problem.message


def test_bad_package_name(tmp_path: Path) -> None:
    text = HEADER + '\n[packages]\napt = ["nginx", "Not A Package"]\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "packages.apt"
    assert "'Not A Package'" in problem.message
    assert "'nginx'" not in problem.message


@pytest.mark.parametrize("name", ["Web", "-web", "web server", "a" * 64, ""])
def test_bad_image_name(tmp_path: Path, name: str) -> None:
    problem = only(write(tmp_path, f'[image]\nname = "{name}"\n'))
    assert problem.path == "image.name"
    assert problem.line == 2
    assert "not an image name" in problem.message


def test_missing_image_section(tmp_path: Path) -> None:
    problem = only(write(tmp_path, '[packages]\napt = ["nginx"]\n'))
    assert problem.path == "image"
    assert "required" in problem.message.lower()


def test_step_with_no_kind(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nrun = "a"\n\n[[steps]]\nrun = "b"\n\n[[steps]]\nto = "/x"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[2]"
    assert problem.line == lines_of(text, "[[steps]]")[2] == 10
    assert "exactly one of" in problem.message


def test_step_with_two_kinds(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hello\n")
    text = (
        HEADER
        + '\n[[steps]]\nrun = "a"\n\n[[steps]]\nrun = "b"\n'
        + '\n[[steps]]\nrun = "c"\ncopy = "motd"\nto = "/etc/motd"\n'
    )
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[2]"
    assert problem.line == lines_of(text, "[[steps]]")[2]
    assert "exactly one of" in problem.message


def test_unknown_key_in_step_has_no_kind_in_its_path(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nrun = "a"\nshel = ["/bin/bash"]\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].shel"
    assert problem.line == line_of(text, "shel =")


# --- copy steps ---


def copy_recipe(source: str, target: str) -> str:
    return HEADER + f'\n[[steps]]\ncopy = "{source}"\nto = "{target}"\n'


def test_copy_target_not_absolute(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    text = copy_recipe("motd", "etc/motd")
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].to"
    assert problem.line == line_of(text, "to =")
    assert "absolute" in problem.message


@pytest.mark.parametrize("target", ["/etc/../root/.ssh/x", "/..", "/var/www/../../x/"])
def test_copy_target_with_dotdot(tmp_path: Path, target: str) -> None:
    (tmp_path / "motd").write_text("hi\n")
    problem = only(write(tmp_path, copy_recipe("motd", target)))
    assert problem.path == "steps[0].to"
    assert "'..'" in problem.message


def test_copy_target_with_dots_in_a_name_is_fine(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    loaded = load_recipe(write(tmp_path, copy_recipe("motd", "/etc/..motd.d/x")))
    step = loaded.recipe.steps[0]
    assert isinstance(step, CopyStep)
    assert step.target == "/etc/..motd.d/x"


def test_missing_copied_file(tmp_path: Path) -> None:
    text = copy_recipe("nope.txt", "/etc/nope.txt")
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].copy"
    assert problem.line == line_of(text, "copy =")
    assert "does not exist" in problem.message
    assert str(tmp_path / "nope.txt") in problem.message


def test_copy_source_climbing_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x\n")  # it exists: being outside is the problem
    folder = tmp_path / "recipes"
    problem = only(write(folder, copy_recipe("../secret", "/x")))
    assert problem.path == "steps[0].copy"
    assert "outside the recipe's folder" in problem.message


def test_copy_source_absolute(tmp_path: Path) -> None:
    (tmp_path / "abs.txt").write_text("x\n")
    problem = only(write(tmp_path, copy_recipe(str(tmp_path / "abs.txt"), "/x")))
    assert problem.path == "steps[0].copy"
    assert "relative to the recipe's folder" in problem.message


def test_copy_source_symlink_pointing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "key").write_text("secret\n")
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "innocent").symlink_to(outside)
    problem = only(write(folder, copy_recipe("innocent/key", "/x")))
    assert problem.path == "steps[0].copy"
    assert "outside the recipe's folder" in problem.message


def test_copy_source_symlink_staying_inside_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x\n")
    (tmp_path / "alias.txt").symlink_to("real.txt")
    loaded = load_recipe(write(tmp_path, copy_recipe("alias.txt", "/x")))
    assert len(loaded.recipe.steps) == 1


# --- ansible steps and the image's origin ---


def test_missing_playbook(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nansible = "playbooks/site.yml"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].ansible"
    assert problem.line == line_of(text, "ansible =")
    assert "does not exist" in problem.message


def test_playbook_must_be_yaml(tmp_path: Path) -> None:
    (tmp_path / "site.txt").write_text("- hosts: all\n")
    problem = only(write(tmp_path, HEADER + '\n[[steps]]\nansible = "site.txt"\n'))
    assert problem.path == "steps[0].ansible"
    assert ".yml" in problem.message


def test_parent_and_bootstrap_both_given(tmp_path: Path) -> None:
    text = HEADER + 'parent = "base"\n\n[image.bootstrap]\ndebian = "bookworm"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "image.bootstrap"
    assert problem.line == line_of(text, "[image.bootstrap]")
    assert "mutually exclusive" in problem.message
    assert "parent and bootstrap" in problem.message


def test_parent_recipe_path_missing(tmp_path: Path) -> None:
    problem = only(write(tmp_path, HEADER + 'parent = "base.toml"\n'))
    assert problem.path == "image.parent"
    assert problem.line == 3
    assert "does not exist" in problem.message


def test_parent_neither_path_nor_ref(tmp_path: Path) -> None:
    problem = only(write(tmp_path, HEADER + 'parent = "Base:v1"\n'))
    assert problem.path == "image.parent"
    assert "is not an image ref" in problem.message
    assert "a parent is a recipe path (*.toml) or an image ref" in problem.message


@pytest.mark.parametrize(
    ("parent", "why"),
    [
        (
            "tiny:99999999999999999999999",
            "a version is a whole number from 1 to 9223372036854775807",
        ),
        ("tiny:9223372036854775808", "a version is a whole number from 1 to 9223372036854775807"),
        ("tiny:01", "without leading zeros"),
        ("t" * 64, "a name is at most 63 characters"),
        ("tiny:" + "c" * 5000, "too long"),
    ],
)
def test_parent_ref_out_of_bounds_is_a_problem_with_its_line(
    tmp_path: Path, parent: str, why: str
) -> None:
    problem = only(write(tmp_path, HEADER + f'parent = "{parent}"\n'))
    assert (problem.path, problem.line) == ("image.parent", 3)
    assert why in problem.message


# --- whole files ---


def test_toml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    text = HEADER + 'description = "ok"\nparent = base\n'
    problem = only(write(tmp_path, text))
    assert problem.line == 4
    assert problem.path == ""
    assert problem.message.startswith("TOML syntax:")
    assert "at line" not in problem.message  # the position moved into Problem.line


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_bytes(b'[image]\nname = "w\xffb"\n')
    problem = only(path)
    assert "UTF-8" in problem.message


def test_missing_recipe_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_recipe(tmp_path / "absent.toml")


def test_several_problems_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = (
        "[image]\n"
        'name = "Web"\n'  # 2: bad name
        'colour = "red"\n'  # 3: unknown key
        "\n[packages]\n"
        'apt = "nginx"\n'  # 6: wrong type
        "\n[[steps]]\n"
        'copy = "missing.txt"\n'  # 9: missing input
        'to = "relative"\n'  # 10: target not absolute
        "\n[[steps]]\n"  # 12: no kind
        'to = "/x"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    found = caught.value.problems
    assert [(p.line, p.path) for p in found] == [
        (2, "image.name"),
        (3, "image.colour"),
        (6, "packages.apt"),
        (9, "steps[0].copy"),
        (10, "steps[0].to"),
        (12, "steps[1]"),
    ]
    assert caught.value.message.startswith("recipe has 6 problems")
    assert f"{path}:10: steps[0].to:" in caught.value.message


def test_lines_of_keys_in_the_third_steps_table(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    text = (
        HEADER
        + '\n[[steps]]\ncopy = "motd"\nto = "/etc/motd"\nmode = "0644"\n'
        + '\n[[steps]]\nrun = "true"\n'
        + "\n# the broken one\n[[steps]]\n"
        + 'copy = "motd"\n'
        + 'to = "etc/motd"     # THIRD-TO\n'
        + 'mode = "rwx"        # THIRD-MODE\n'
        + 'owner = "Nginx"     # THIRD-OWNER\n'
    )
    found = {p.path: p.line for p in problems(write(tmp_path, text))}
    assert found == {
        "steps[2].to": line_of(text, "THIRD-TO"),
        "steps[2].mode": line_of(text, "THIRD-MODE"),
        "steps[2].owner": line_of(text, "THIRD-OWNER"),
    }


def test_line_of_key_in_subtable_of_a_step(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nrun = "a"\n\n[[steps]]\nrun = "b"\n[steps.env]\nPORT = 80\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[1].env.PORT"
    assert problem.line == line_of(text, "PORT =")


def test_recipe_error_is_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    error = RecipeError([Problem("r.toml", 3, "image.colour", "unknown key")])
    assert isinstance(error, BadInput)
    assert error.exit_code == 2
    assert RecipeError.exit_code == 2
    assert error.message == "recipe has 1 problem\n  r.toml:3: image.colour: unknown key"


def test_problem_str_without_line_or_path() -> None:
    assert str(Problem("r.toml", None, "", "broken")) == "r.toml: broken"


# --- a valid recipe ---


def test_valid_recipe_loads_to_a_frozen_model(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<h1>hi</h1>\n")
    text = (
        HEADER
        + 'parent = "base:3"\n'
        + '\n[packages]\napt = ["nginx-light", "libc6:amd64", "curl=7.88.1-10"]\n'
        + '\n[[steps]]\ncopy = "site/"\nto = "/var/www/html/"\n'
        + '\n[[steps]]\nrun = "nginx -t"\n'
    )
    loaded = load_recipe(write(tmp_path, text))
    recipe = loaded.recipe
    assert loaded.name == "web"
    assert loaded.folder == tmp_path.resolve()
    assert recipe.image.origin == "parent"
    assert recipe.packages.apt == ("nginx-light", "libc6:amd64", "curl=7.88.1-10")
    copy, run = recipe.steps
    assert isinstance(copy, CopyStep)
    assert copy.target == "/var/www/html/"
    assert isinstance(run, RunStep)
    assert loaded.where("steps", 1, "run") == f"{loaded.path}:{line_of(text, 'nginx -t')}"
    with pytest.raises(ValidationError):
        recipe.image.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        recipe.packages = recipe.packages  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.digest = "0" * 64  # type: ignore[misc]
    assert isinstance(recipe.steps, tuple)
    assert recipe.image.name == "web"


# --- the CLI ---


def test_cli_bake_of_a_bad_recipe_exits_2_and_stores_nothing(tmp_path: Path) -> None:
    text = HEADER + 'colour = "red"\n\n[packages]\napt = "nginx"\n'
    recipe = write(tmp_path / "recipes", text)
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key != "FORCE_COLOR"}
    env["KILN_HOME"] = str(home)
    result = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "bake", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"{recipe}:3: image.colour:" in result.stderr
    assert f"{recipe}:{line_of(text, 'apt =')}: packages.apt:" in result.stderr
    assert "recipe has 2 problems" in result.stderr
    assert "Traceback" not in result.stderr
    oci = home / "oci"
    if oci.exists():
        assert Layout(oci).refs() == {}
        assert not any((oci / "blobs" / "sha256").glob("*"))


# --- LineIndex and format_path ---


INDEXED = """\
# comment = 1
[image]
name = "web"
"description" = "quoted key"
bootstrap.debian = "bookworm"

[[steps]]
run = '''
fake = "not a key"
[[steps]]
'''
after = 1

[[steps]]
  copy = "a"   # indented
run2 = \"\"\"one line\"\"\"
next = 2

[image.bootstrap2]
mirror = "http://x"
"""


def test_line_index_records_headers_and_keys() -> None:
    index = LineIndex(INDEXED)
    assert index.lines[("image",)] == 2
    assert index.lines[("image", "name")] == 3
    assert index.lines[("image", "description")] == 4
    assert index.lines[("image", "bootstrap", "debian")] == 5
    assert index.lines[("steps", 0)] == 7
    assert index.lines[("steps", 0, "run")] == 8
    assert index.lines[("steps", 0, "after")] == 12
    assert index.lines[("steps", 1)] == 14
    assert index.lines[("steps", 1, "copy")] == 15
    assert index.lines[("steps", 1, "next")] == 17
    assert index.lines[("image", "bootstrap2", "mirror")] == 20


def test_line_index_skips_comments_and_multiline_strings() -> None:
    index = LineIndex(INDEXED)
    assert ("comment",) not in index.lines
    assert ("steps", 0, "fake") not in index.lines
    assert ("steps", 2) not in index.lines  # the [[steps]] inside the string is text


def test_line_of_falls_back_to_nearest_ancestor() -> None:
    index = LineIndex(INDEXED)
    assert index.line_of(("steps", 1, "to")) == 14
    assert index.line_of(["image", "bootstrap", "debian", "extra"]) == 5
    assert index.line_of(("image", "colour")) == 2
    assert index.line_of(("runtime", "state")) is None
    assert index.line_of(()) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("steps", 2, "copy"), "steps[2].copy"),
        (("image", "colour"), "image.colour"),
        (("steps", 0), "steps[0]"),
        (("runtime", "config", "port", "default"), "runtime.config.port.default"),
        (("a", 1, 2, "b"), "a[1][2].b"),
        ((), ""),
        ([3, "x"], "[3].x"),
    ],
)
def test_format_path(path: tuple[str | int, ...], expected: str) -> None:
    assert format_path(path) == expected


# --- hostile input: bounded files, strings, nesting and inputs ---


def test_a_recipe_symlinked_to_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    link = tmp_path / "zero.toml"
    link.symlink_to("/dev/zero")
    problem = only(link)
    assert problem.file == str(link)
    assert "character device" in problem.message and "/dev/zero" in problem.message


def test_a_fifo_recipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    assert "FIFO" in only(fifo).message


def test_a_folder_or_a_symlink_loop_is_not_a_recipe(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    assert "folder" in only(tmp_path / "dir.toml").message
    (tmp_path / "a.toml").symlink_to("b.toml")
    (tmp_path / "b.toml").symlink_to("a.toml")
    assert "symlink loop" in only(tmp_path / "a.toml").message


def test_an_oversized_recipe_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "# " + "x" * (1 << 20) + "\n")
    assert "at most 1048576 bytes" in only(path).message


def test_nul_bytes_are_refused_in_values_and_keys_with_their_lines(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nrun = "echo a\\u0000b"\n[steps.env]\n"K\\u0000" = "v"\n'
    found = problems(write(tmp_path, text))
    by_path = {p.path: p for p in found}
    assert by_path["steps[0].run"].line == line_of(text, "run =")
    assert "NUL" in by_path["steps[0].run"].message
    assert "NUL" in by_path["steps[0].env"].message


def test_a_long_string_is_refused(tmp_path: Path) -> None:
    text = HEADER + '\n[[steps]]\nrun = "' + "a" * 70_000 + '"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].run" and "at most 65536 bytes" in problem.message


@pytest.mark.parametrize("depth", [40, 2000])
def test_deep_nesting_is_refused(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    text = HEADER + f'\n[[steps]]\nansible = "p.yml"\nextra_vars = {{ a = {nested} }}\n'
    (tmp_path / "p.yml").write_text("[]\n")
    problem = only(write(tmp_path, text))
    assert "nested" in problem.message


def test_deep_dotted_tables_are_refused_without_recursion(tmp_path: Path) -> None:
    text = HEADER + "[" + ".".join(["t"] * 5000) + "]\n"
    found = problems(write(tmp_path, text))
    assert any("nested more than 32" in p.message for p in found)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("9223372036854775807", "less than or equal"),
        ("9223372036854775808", "64 bits"),
        ("1.0", "valid integer"),
        ("1700000000.5", "valid integer"),
        ("true", "valid integer"),
        ("99999999999999999999", "64 bits"),
    ],
)
def test_source_date_epoch_is_a_bounded_integer(tmp_path: Path, value: str, needle: str) -> None:
    text = HEADER + f"source_date_epoch = {value}\n"
    found = problems(write(tmp_path, text))
    assert all(p.path == "image.source_date_epoch" and p.line == 3 for p in found), found
    assert any(needle in p.message for p in found), found


def test_a_huge_integer_anywhere_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text("[]\n")
    text = HEADER + '\n[[steps]]\nansible = "p.yml"\nextra_vars = { n = 1' + "0" * 30 + " }\n"
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].extra_vars.n" and "64 bits" in problem.message
    text = HEADER + "n = 1" + "0" * 5000 + "\n"
    assert "out of range" in only(write(tmp_path, text)).message


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ('["/"]', "'/' cannot be a state path"),
        ('["/proc/x"]', "under /proc"),
        ('["/run"]', "under /run"),
        ('["/dev/shm/x"]', "under /dev"),
        ('["/var//lib"]', "write it as '/var/lib'"),
        ('["/var/lib/"]', "write it as '/var/lib'"),
        ('["/var/./lib"]', "write it as '/var/lib'"),
        ('["/var/../etc"]', "without '..'"),
        ('["var/lib"]', "absolute"),
        ('["/var/lib", "/var/lib/web"]', "overlap"),
        ('["/srv", "/srv"]', "twice"),
        ('["/srv\\nx"]', "control characters"),
    ],
)
def test_state_paths_are_real_sub_paths(tmp_path: Path, state: str, needle: str) -> None:
    text = HEADER + f"\n[runtime]\nstate = {state}\n"
    problem = only(write(tmp_path, text))
    assert problem.path == "runtime.state" and problem.line == line_of(text, "state =")
    assert needle in problem.message


def test_a_fifo_as_a_copy_source_is_refused_with_its_path(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    text = HEADER + '\n[[steps]]\ncopy = "pipe"\nto = "/x"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].copy" and "FIFO" in problem.message


def test_special_files_inside_a_copied_folder_are_refused(tmp_path: Path) -> None:
    site = tmp_path / "site" / "deep"
    site.mkdir(parents=True)
    (site / "ok.html").write_text("ok")
    os.mkfifo(site / "pipe")
    (site / "zero").symlink_to("/dev/zero")  # a symlink is copied as a link: fine
    (tmp_path / "site" / "loop").symlink_to("loop")  # so is a looping one
    text = HEADER + '\n[[steps]]\ncopy = "site"\nto = "/srv/"\n'
    problem = only(write(tmp_path, text))
    assert "deep/pipe" in problem.message and "FIFO" in problem.message
    assert "zero" not in problem.message and "loop" not in problem.message


def test_a_symlink_to_a_device_or_a_loop_as_copy_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "loop").symlink_to("loop")
    text = (
        HEADER
        + '\n[[steps]]\ncopy = "null"\nto = "/x"\n'
        + '\n[[steps]]\ncopy = "loop"\nto = "/y"\n'
    )
    first, second = problems(write(tmp_path, text))
    assert first.path == "steps[0].copy" and "outside the recipe's folder" in first.message
    assert second.path == "steps[1].copy" and "symlink loop" in second.message


def test_a_fifo_beside_a_playbook_is_refused(tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "site.yml").write_text("[]\n")
    os.mkfifo(books / "pipe")
    text = HEADER + '\n[[steps]]\nansible = "books/site.yml"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "steps[0].ansible" and "pipe" in problem.message


def test_an_import_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "root.tar")
    text = '[image]\nname = "vendor"\nimport = "root.tar"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "image.import" and "FIFO" in problem.message


def test_an_over_long_input_name_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    text = HEADER + f'\n[[steps]]\ncopy = "{"x" * 300}"\nto = "/x"\n'
    found = problems(write(tmp_path, text))
    assert {p.path for p in found} == {"steps[0].copy"}


@pytest.mark.parametrize(
    ("step", "path", "needle"),
    [
        ('run = "x"\nshell = []', "steps[0].shell", "at least 1"),
        ('run = "x"\nshell = ["sh", "-c"]', "steps[0].shell", "absolute path"),
        ('run = "x"\nenv = { "A=B" = "c" }', "steps[0].env", "environment variable"),
        ('ansible = "p.yml"\nextra_vars = { d = 1979-05-27 }', "steps[0].extra_vars", "date"),
        ('ansible = "p.yml"\nextra_vars = { f = inf }', "steps[0].extra_vars", "inf"),
        ('copy = "p.yml"\nto = "/a\\tb"', "steps[0].to", "control"),
    ],
)
def test_step_values_that_would_fail_at_bake_time(
    tmp_path: Path, step: str, path: str, needle: str
) -> None:
    (tmp_path / "p.yml").write_text("[]\n")
    problem = only(write(tmp_path, HEADER + f"\n[[steps]]\n{step}\n"))
    assert problem.path == path and needle in problem.message, problem


def test_a_lock_file_that_is_a_fifo_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER)
    os.mkfifo(tmp_path / "recipe.toml.lock")
    problem = only(path)
    assert problem.file == str(tmp_path / "recipe.toml.lock") and "FIFO" in problem.message


# --- strict values: a bool is a bool, an integer an integer ---


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ("[runtime.config.site]\nrequired = 1", "runtime.config.site.required"),
        ('[runtime.config.site]\nrequired = "true"', "runtime.config.site.required"),
        ('[runtime.config.token]\nsecret = "yes"', "runtime.config.token.secret"),
        ("[runtime.config.token]\nsecret = 0", "runtime.config.token.secret"),
    ],
)
def test_a_bool_is_never_a_number_or_a_string(tmp_path: Path, table: str, path: str) -> None:
    text = HEADER + f"\n{table}\n"
    problem = only(write(tmp_path, text))
    assert problem.path == path
    assert problem.line == len(text.splitlines())
    assert "boolean" in problem.message
    if '"' in table:  # a quoted value is told to lose its quotes, as the policy's are
        assert "without quotes" in problem.message


def test_every_bool_and_int_of_the_recipe_schema_is_strict() -> None:
    """A field added later is strict too: pydantic's lax mode turns 1 and "true" into True."""
    seen: set[type[BaseModel]] = set()
    lax: list[str] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            named = [info.annotation, *info.metadata, *typing_args(info.annotation)]
            scalar = bool in named or int in named
            if scalar and not any(isinstance(item, Strict) for item in named):
                lax.append(f"{model.__name__}.{name}")
            for item in named:
                if isinstance(item, type) and issubclass(item, BaseModel):
                    walk(item)

    walk(Recipe)
    for kind in steps.kinds():
        walk(kind.model)
    assert {"ConfigKey", "ImageSection", "CopyStep", "RunStep"} <= {m.__name__ for m in seen}
    assert lax == []


def typing_args(annotation: object) -> list[object]:
    """Every type (and Annotated metadata) an annotation names, through unions and tuples."""
    found: list[object] = []
    for arg in typing.get_args(annotation):
        found += [arg, *typing_args(arg)]
    return found


# --- one duration grammar ---


@pytest.mark.parametrize(("timeout", "seconds"), [("1h", 3600), ("500ms", 0.5), ("30", 30)])
def test_a_health_timeout_takes_the_policys_durations(
    tmp_path: Path, timeout: str, seconds: float
) -> None:
    text = HEADER + f'\n[runtime.health]\ncommand = "true"\ntimeout = "{timeout}"\n'
    runtime = load_recipe(write(tmp_path, text)).recipe.runtime
    contract = from_json(runtime.model_dump(mode="json"))
    assert contract.health is not None and contract.health.timeout == seconds


@pytest.mark.parametrize(("timeout", "needle"), [("2d", "longer than a day"), ("1y", "500ms, 30s")])
def test_a_health_timeout_is_at_most_a_day(tmp_path: Path, timeout: str, needle: str) -> None:
    text = HEADER + f'\n[runtime.health]\ncommand = "true"\ntimeout = "{timeout}"\n'
    problem = only(write(tmp_path, text))
    assert problem.path == "runtime.health.timeout" and needle in problem.message


# --- where a copy may write ---


@pytest.mark.parametrize(
    ("target", "api"),
    [
        ("/proc/self/x", "/proc"),
        ("/sys/kernel/x", "/sys"),
        ("/dev/", "/dev"),
        ("/dev", "/dev"),
        ("//proc/x", "/proc"),
        ("/./sys/x", "/sys"),
        ("/run/kiln/recipe/x", "/run"),
    ],
)
def test_a_copy_into_a_file_system_mounted_over_it_is_refused(
    tmp_path: Path, target: str, api: str
) -> None:
    (tmp_path / "motd").write_text("hi\n")
    text = copy_recipe("motd", target)
    problem = only(write(tmp_path, text))
    assert (problem.path, problem.line) == ("steps[0].to", line_of(text, "to ="))
    assert f"is under {api}, which the kernel, systemd or kiln mounts over" in problem.message


def test_a_copy_beside_those_file_systems_is_fine(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    for target in ("/procedures/x", "/devel/", "/etc/proc/x", "/srv/run/x"):
        step = load_recipe(write(tmp_path, copy_recipe("motd", target))).recipe.steps[0]
        assert isinstance(step, CopyStep) and step.to == target
