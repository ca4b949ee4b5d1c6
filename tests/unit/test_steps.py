"""Step kinds: the registry drives the recipe's Step union, the loader's input checks, the
cache key and provenance; each kind applies to a Target; a new kind is one file plus one
registry entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln import proc, steps
from kiln.bake import cachekey
from kiln.bake.cachekey import materials
from kiln.digests import file_sha256, tree_digest
from kiln.errors import BadInput, KilnError, RecipeError, StepFailed
from kiln.recipe import AnsibleStep, CopyStep, RunStep, load_recipe
from kiln.recipe.models import STEP_KINDS, Recipe
from kiln.steps import ansible, copy, run
from kiln.steps.target import BAKE_SHARE, RECIPE_TARGET, Target, Tooling

HEADER = '[image]\nname = "web"\n'


class Commands:
    """What a target was asked to run: the runner of a target whose commands are not the
    point of the test."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[str], dict[str, str], str | None]] = []

    def run(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.seen.append((list(argv), dict(env), None))

    def tool_run(self, argv: Sequence[str], env: Mapping[str, str], part: str) -> None:
        self.seen.append((list(argv), dict(env), part))


def web_folder(folder: Path) -> Path:
    """A recipe with a copy and an ansible step, a recipe and a lock beside its playbook."""
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("<h1>hi</h1>\n")
    books = folder / "playbooks"
    (books / "templates").mkdir(parents=True)
    (books / "web.yml").write_text("- hosts: all\n  tasks: []\n")
    (books / "templates" / "site.j2").write_text("{{ site }}\n")
    (books / "other.toml").write_text(HEADER)
    (books / "other.toml.lock").write_text("")
    recipe = folder / "web.toml"
    recipe.write_text(
        HEADER
        + '\n[[steps]]\ncopy = "site/"\nto = "/srv/"\n'
        + '\n[[steps]]\nansible = "playbooks/web.yml"\nextra_vars = { site = "x" }\n'
        + '\n[[steps]]\nrun = "true"\n'
    )
    return recipe


# --- the registry drives the recipe's schema ---


def test_the_step_union_holds_each_registered_kind_in_order() -> None:
    annotation = Recipe.model_fields["steps"].annotation
    (step,) = typing.get_args(annotation)[:1]
    union = typing.get_args(step)[0]
    members = [typing.get_args(member)[0] for member in typing.get_args(union)]
    assert members == [kind.model for kind in steps.kinds()] == [RunStep, CopyStep, AnsibleStep]
    assert STEP_KINDS == steps.names() == ("run", "copy", "ansible")


@pytest.mark.parametrize("table", [{"to": "/x"}, {"run": "a", "copy": "b", "to": "/x"}])
def test_a_step_needs_exactly_one_kind_key_named_from_the_registry(
    table: dict[str, str],
) -> None:
    with pytest.raises(ValidationError) as caught:
        Recipe.model_validate({"image": {"name": "web"}, "steps": [table]})
    (error,) = caught.value.errors()
    assert error["msg"] == "a step needs exactly one of the keys run, copy or ansible"


def test_each_step_validates_to_its_kinds_model() -> None:
    recipe = Recipe.model_validate(
        {
            "image": {"name": "web"},
            "steps": [{"run": "true"}, {"copy": "a", "to": "/a"}, {"ansible": "p.yml"}],
        }
    )
    assert [steps.kind_of(step).name for step in recipe.steps] == ["run", "copy", "ansible"]


def test_versions_name_every_kind() -> None:
    assert steps.versions() == {
        "run": run.VERSION,
        "copy": copy.VERSION,
        "ansible": ansible.VERSION,
    }


def test_a_registry_entry_must_name_a_module_with_a_kind() -> None:
    with pytest.raises(TypeError, match="has no KIND"):
        steps._load(("kiln.steps.target",))
    with pytest.raises(TypeError, match="share a name"):
        steps._load(("kiln.steps.run", "kiln.steps.run"))


def test_an_unregistered_model_has_no_kind() -> None:
    with pytest.raises(TypeError, match="not a registered step kind"):
        steps.kind_of(Recipe.model_validate({"image": {"name": "web"}}))


# --- inputs: one declaration for the loader, the cache key and provenance ---


def test_inputs_of_each_kind() -> None:
    assert steps.inputs(RunStep(run="true")) == []
    assert steps.inputs(CopyStep.model_validate({"copy": "site/", "to": "/srv/"})) == [
        (copy.INPUTS[0], "site/")
    ]
    assert steps.inputs(AnsibleStep(ansible="books/web.yml")) == [
        (ansible.PLAYBOOK, "books/web.yml"),
        (ansible.FOLDER, "books/web.yml"),
    ]


def test_raw_inputs_read_every_kind_key_a_table_holds() -> None:
    found = steps.raw_inputs({"copy": 3, "ansible": "p.yml", "to": "/x"})
    assert found == [(copy.INPUTS[0], 3), (ansible.PLAYBOOK, "p.yml"), (ansible.FOLDER, "p.yml")]


def test_a_folder_input_is_the_folder_of_the_file_named_symlinks_resolved(tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "real.yml").write_text("[]\n")
    (tmp_path / "site.yml").symlink_to("books/real.yml")
    assert ansible.FOLDER.locate(tmp_path, "site.yml") == tmp_path / "books"
    assert ansible.PLAYBOOK.locate(tmp_path, "site.yml") == tmp_path / "books" / "real.yml"


def test_the_loader_checks_the_declared_inputs(tmp_path: Path) -> None:
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "web.yml").write_text("[]\n")
    os.mkfifo(tmp_path / "books" / "pipe")
    (tmp_path / "other").mkdir()
    text = (
        HEADER
        + '\n[[steps]]\ncopy = "absent"\nto = "/x"\n'
        + '\n[[steps]]\nansible = "books/web.yml"\n'
        + '\n[[steps]]\nansible = "other/site.txt"\n'
    )
    (tmp_path / "recipe.toml").write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "recipe.toml")
    found = [(p.path, p.message) for p in caught.value.problems]
    assert [path for path, _message in found] == [
        "steps[0].copy",
        "steps[1].ansible",
        "steps[2].ansible",
        "steps[2].ansible",
    ]
    assert "does not exist" in found[0][1]
    assert "pipe" in found[1][1]
    assert sorted(message for path, message in found[2:]) == [
        f"'other/site.txt' does not exist (looked for {tmp_path / 'other' / 'site.txt'})",
        "a playbook is a .yml or .yaml file",
    ]


def test_cache_key_inputs_keep_their_composition(tmp_path: Path) -> None:
    """The key's inputs are what they were before kinds declared them: existing images
    stay cache hits."""
    recipe = load_recipe(web_folder(tmp_path))
    books = tmp_path / "playbooks"
    assert cachekey.inputs(recipe) == {
        "steps[0].copy": tree_digest(tmp_path / "site"),
        "steps[1].ansible": tree_digest(books, skip_suffixes=(".toml", ".toml.lock")),
        "steps[1].playbook": file_sha256(books / "web.yml"),
    }
    before = cachekey.compute(recipe, None)
    (books / "other.toml").write_text(HEADER + "# changed\n")
    assert cachekey.compute(load_recipe(tmp_path / "web.toml"), None) == before
    (books / "templates" / "site.j2").write_text("{{ site }}!\n")
    assert cachekey.compute(load_recipe(tmp_path / "web.toml"), None) != before


def test_provenance_materials_name_each_input_by_path_and_digest_kind(tmp_path: Path) -> None:
    recipe = load_recipe(web_folder(tmp_path))
    assert [(m.key, m.path, m.kind) for m in materials(recipe)] == [
        ("steps[0].copy", "site/", "tree"),
        ("steps[1].playbook", "playbooks/web.yml", "file"),
        ("steps[1].ansible", "playbooks", "tree"),
    ]


# --- each kind applies to a Target ---


def target_of(tmp_path: Path, commands: Commands, tooling: Tooling | None = None) -> Target:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_text("")
    return Target("machine m", root, tmp_path, commands.run, tooling)


def test_run_runs_its_shell_in_the_target(tmp_path: Path) -> None:
    commands = Commands()
    target = target_of(tmp_path, commands)
    steps.apply(target, RunStep(run="echo hi", env={"A": "b"}), 0)
    assert commands.seen == [(["/bin/sh", "-c", "echo hi"], {"A": "b"}, None)]
    with pytest.raises(BadInput, match="/bin/bash is not in the image"):
        steps.apply(target, RunStep(run="x", shell=("/bin/bash", "-c")), 1)


def test_copy_writes_into_the_targets_root(tmp_path: Path) -> None:
    recipe = load_recipe(web_folder(tmp_path))
    commands = Commands()
    target = target_of(tmp_path, commands)
    steps.apply(target, recipe.recipe.steps[0], 0)
    assert (target.root / "srv" / "index.html").read_text() == "<h1>hi</h1>\n"
    assert commands.seen == []


def test_ansible_without_tooling_says_how_the_machine_was_launched(tmp_path: Path) -> None:
    recipe = load_recipe(web_folder(tmp_path))
    with pytest.raises(KilnError) as caught:
        steps.apply(target_of(tmp_path, Commands()), recipe.recipe.steps[1], 1)
    assert caught.value.message == f"machine m was not launched with {tmp_path} bound in"
    assert caught.value.hint is not None and "kiln test --converge" in caught.value.hint


@pytest.mark.parametrize(
    ("seen", "playbook"),
    [(None, f"{RECIPE_TARGET}/playbooks/web.yml"), (BAKE_SHARE, f"{BAKE_SHARE}/web.yml")],
)
def test_ansible_runs_the_playbook_where_the_tooling_shows_it(
    tmp_path: Path, seen: str | None, playbook: str
) -> None:
    recipe = load_recipe(web_folder(tmp_path))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "ansible-playbook").write_text("")
    commands = Commands()
    tooling = (
        Tooling(venv, commands.tool_run)
        if seen is None
        else Tooling(venv, commands.tool_run, lambda _part: seen)
    )
    target = target_of(tmp_path, commands, tooling)
    with pytest.raises(BadInput, match="needs python3"):
        steps.apply(target, recipe.recipe.steps[1], 1)
    (target.root / "usr" / "bin").mkdir(parents=True)
    (target.root / "usr" / "bin" / "python3").write_text("")
    steps.apply(target, recipe.recipe.steps[1], 1)
    ((argv, env, part),) = commands.seen
    assert argv[0] == str(venv / "bin" / "ansible-playbook")
    assert argv[-3:] == [playbook, "--extra-vars", '{"site": "x"}']
    assert env == ansible.ENV and part == "playbooks"


# --- a failed step is one StepFailed, for a bake and a machine alike ---


def failing(argv: Sequence[str], env: Mapping[str, str]) -> None:
    raise proc.CommandError(argv, 3, "about to fail\n")


def test_a_failed_command_says_where_which_step_what_ran_and_how_it_ended(tmp_path: Path) -> None:
    (tmp_path / "root" / "bin").mkdir(parents=True)
    (tmp_path / "root" / "bin" / "sh").write_text("")
    target = Target("the build root of web", tmp_path / "root", tmp_path, failing)
    with pytest.raises(StepFailed) as caught:
        steps.apply_at(target, RunStep(run="exit 3"), 2, "web.toml:9", hint="keep the root")
    assert caught.value.message == (
        "web.toml:9: steps[2] (run) failed in the build root of web with exit code 3\n"
        "  command: /bin/sh -c 'exit 3'\n"
        "--- last lines of output ---\nabout to fail"
    )
    assert caught.value.exit_code == 1 and caught.value.hint == "keep the root"


def test_a_step_that_refuses_its_input_keeps_exit_code_2(tmp_path: Path) -> None:
    """A copy source swapped for a symlink to a device after the recipe loaded: the step
    refuses it, and the bake says so as bad input (2), not as a failed operation (1)."""
    recipe = load_recipe(web_folder(tmp_path))
    (tmp_path / "root").mkdir()
    target = Target("machine m", tmp_path / "root", tmp_path, Commands().run)
    site = tmp_path / "site"
    for entry in site.iterdir():
        entry.unlink()
    site.rmdir()
    site.symlink_to("/dev/zero")
    with pytest.raises(StepFailed) as caught:
        steps.apply_at(target, recipe.recipe.steps[0], 0, "web.toml:4")
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        "web.toml:4: steps[0] (copy) in machine m: copy source /dev/zero is a device"
    )
    assert caught.value.hint == "copy copies regular files, folders and symlinks only"
    assert not list((tmp_path / "root").iterdir())


def test_a_step_that_fails_on_the_file_system_says_where_too(tmp_path: Path) -> None:
    recipe = load_recipe(web_folder(tmp_path))
    target = Target("machine m", tmp_path / "gone", tmp_path, Commands().run)
    with pytest.raises(StepFailed) as caught:
        steps.apply_at(target, recipe.recipe.steps[0], 0, "web.toml:4")
    assert caught.value.message.startswith("web.toml:4: steps[0] (copy) in machine m: ")
    assert caught.value.exit_code == 1


def test_one_wrapper_for_step_failures() -> None:
    """The bake and a machine's convergence hand step failures to steps.apply_at alone."""
    src = Path(steps.__file__).parents[1]
    for module in ("bake/build.py", "machines/provision.py"):
        text = (src / module).read_text()
        assert "steps.apply_at(" in text and "StepFailed(" not in text, module


# --- a new kind: one file plus one registry entry ---

GREET = '''
"""`greet`: a file from beside the recipe, upper-cased, at /etc/greeting."""

from __future__ import annotations

from pydantic import Field

from kiln.rootpath import Root
from kiln.steps.kind import Input, Kind, StepModel
from kiln.steps.target import Target

VERSION = 3
INPUTS = (Input("greet", "greeting", "file"),)


class GreetStep(StepModel):
    greet: str = Field(min_length=1)
    then: str = "true"


def apply(target: Target, step: GreetStep, index: int) -> None:
    text = INPUTS[0].locate(target.folder, step.greet).read_text()
    with Root(target.root) as root:
        root.mkdirs("/etc")
        root.write_file("/etc/greeting", text.upper().encode())
    target.run([step.then], {})


KIND = Kind("greet", GreetStep, VERSION, apply, INPUTS)
'''

USE_IT = """
import json
import sys
from pathlib import Path

import kiln.steps

kiln.steps.KIND_MODULES += ("greet",)  # the registry entry

from kiln import steps
from kiln.bake import cachekey
from kiln.errors import RecipeError
from kiln.recipe import load_recipe
from kiln.steps.target import Target

folder = Path(sys.argv[1])
out = {"names": list(steps.names()), "versions": steps.versions()}
try:
    load_recipe(folder / "bad.toml")
except RecipeError as exc:
    out["problems"] = [[p.path, p.message] for p in exc.problems]
recipe = load_recipe(folder / "good.toml")
out["inputs"] = cachekey.inputs(recipe)
out["materials"] = [[m.key, m.path, m.kind] for m in cachekey.materials(recipe)]
ran = []
target = Target("a root", folder / "root", recipe.folder, lambda argv, env: ran.append(argv))
for index, step in enumerate(recipe.recipe.steps):
    steps.apply(target, step, index)
out["ran"] = ran
out["written"] = (folder / "root" / "etc" / "greeting").read_text()
print(json.dumps(out))
"""


def test_a_new_kind_is_one_file_and_one_registry_entry(tmp_path: Path) -> None:
    kinds = tmp_path / "kinds"
    kinds.mkdir()
    (kinds / "greet.py").write_text(GREET)
    folder = tmp_path / "recipe"
    (folder / "root").mkdir(parents=True)
    (folder / "hello.txt").write_text("hello\n")
    (folder / "good.toml").write_text(
        HEADER + '\n[[steps]]\ngreet = "hello.txt"\n\n[[steps]]\ncopy = "hello.txt"\nto = "/x"\n'
    )
    (folder / "bad.toml").write_text(
        HEADER
        + '\n[[steps]]\ngreet = "absent.txt"\n'
        + '\n[[steps]]\ngreet = "hello.txt"\nrun = "true"\n'
        + '\n[[steps]]\ngreet = "hello.txt"\nloud = true\n'
    )
    paths = [str(kinds), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(USE_IT), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["names"] == ["run", "copy", "ansible", "greet"]
    assert out["versions"]["greet"] == 3
    assert out["problems"] == [
        ["steps[0].greet", f"'absent.txt' does not exist (looked for {folder / 'absent.txt'})"],
        ["steps[1]", "a step needs exactly one of the keys run, copy, ansible or greet"],
        ["steps[2].loud", "unknown key (check its spelling against docs/recipes.md)"],
    ]
    digest = file_sha256(folder / "hello.txt")
    assert out["inputs"] == {
        "steps[0].greeting": digest,
        "steps[1].copy": tree_digest(folder / "hello.txt"),
    }
    assert out["materials"][0] == ["steps[0].greeting", "hello.txt", "file"]
    assert out["ran"] == [["true"]]
    assert out["written"] == "HELLO\n"
    # nothing stays registered here
    assert steps.names() == ("run", "copy", "ansible")
