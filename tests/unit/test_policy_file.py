"""The policy file as kiln finds and loads it: anything at a place kiln looks by itself
that is not a regular file is an error (never "no policy"), values keep the type their
key takes, ``after`` makes a pipeline (no self-reference, no undefined channel, no cycle),
and every problem names file:line and its key path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kiln.app.workspace import Workspace
from kiln.errors import RecipeError
from kiln.home import Home
from kiln.lifecycle import policy, trust
from kiln.lifecycle.policyfile import locate
from tests.unit.lifecycle_rows import add_image, workspace

__all__ = ["workspace"]  # the fixture

REQUIRING = '[trust]\nkeys = ["release.pub"]\nrequire_signatures = true\n'


@pytest.fixture
def nowhere(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A current folder of its own, no KILN_POLICY: only ./kiln.toml and the home's count."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.delenv("KILN_POLICY", raising=False)
    monkeypatch.chdir(folder)
    yield folder


def dangling(at: Path) -> None:
    at.symlink_to(at.parent / "gone.toml")


def dev_zero(at: Path) -> None:
    at.symlink_to("/dev/zero")


def fifo(at: Path) -> None:
    os.mkfifo(at)


def folder(at: Path) -> None:
    at.mkdir()


def loop(at: Path) -> None:
    at.symlink_to(at.name)  # itself


def to_a_folder(at: Path) -> None:
    (at.parent / "policies").mkdir()
    at.symlink_to(at.parent / "policies")


def unix_socket(at: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(at))
    server.close()


NOT_REGULAR: dict[str, tuple[Callable[[Path], None], str]] = {
    "dangling symlink": (dangling, "is a dangling symlink"),
    "symlink to /dev/zero": (dev_zero, "is a character device (a symlink to /dev/zero)"),
    "FIFO": (fifo, "is a FIFO"),
    "folder": (folder, "is a folder"),
    "symlink loop": (loop, "is a symlink loop"),
    "symlink to a folder": (to_a_folder, "is a folder (a symlink to"),
    "socket": (unix_socket, "is a socket"),
}


@pytest.mark.parametrize("place", ["current folder", "KILN_HOME"])
@pytest.mark.parametrize("kind", sorted(NOT_REGULAR))
def test_a_policy_path_that_is_not_a_regular_file_fails_closed(
    home: Home, nowhere: Path, place: str, kind: str
) -> None:
    """Each of these once meant "no policy": kiln run booted an unsigned image under a
    policy meant to require signatures. Every reader of the policy refuses now (exit 2)."""
    at = (nowhere if place == "current folder" else home.root) / "kiln.toml"
    make, says = NOT_REGULAR[kind]
    make(at)
    for read in (locate, policy.find, trust.requiring):
        with pytest.raises(RecipeError) as raised:
            read(home)
        assert raised.value.exit_code == 2
        [problem] = raised.value.problems
        assert problem.file == str(at) and says in problem.message, problem
        assert "policy file has 1 problem" in raised.value.message
        assert "remove it to run without a policy" in (raised.value.hint or "")


def test_a_policy_in_the_current_folder_is_refused_before_the_home_one_is_read(
    home: Home, nowhere: Path
) -> None:
    (home.root / "kiln.toml").write_text(REQUIRING)
    dangling(nowhere / "kiln.toml")
    with pytest.raises(RecipeError, match="dangling symlink"):
        trust.requiring(home)


def test_a_symlink_to_a_regular_file_is_a_policy(home: Home, nowhere: Path) -> None:
    real = nowhere / "ops" / "kiln.toml"
    real.parent.mkdir()
    real.write_text(REQUIRING)
    (home.root / "kiln.toml").symlink_to(real)
    assert locate(home) == home.root / "kiln.toml"
    required = trust.requiring(home)
    assert required is not None and required.keys == (real.parent / "release.pub",)
    assert policy.find(home).path == real
    assert policy.find(home).trust.require_signatures


def test_no_file_at_either_place_is_no_policy(home: Home, nowhere: Path) -> None:
    assert locate(home) is None and trust.requiring(home) is None
    assert policy.find(home).path is None


def kiln(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KILN_POLICY", "KILN_CATALOG_URL")}
    env["KILN_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_commands_that_read_the_policy_refuse_a_dangling_one(home: Home, nowhere: Path) -> None:
    dangling(home.root / "kiln.toml")
    result = kiln(home.root, nowhere, "gc", "--dry-run")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{home.root / 'kiln.toml'}: is a dangling symlink" in result.stderr
    assert "Traceback" not in result.stderr and "would remove" not in result.stdout


def test_kiln_run_refuses_before_it_boots(workspace: Workspace) -> None:
    """The image's bytes are not even in the store: kiln run stops at the policy, before
    it reads them (which a run that went on to boot would do first)."""
    add_image(workspace, "web", 1)
    dev_zero(workspace.home.root / "kiln.toml")
    result = kiln(workspace.home.root, workspace.home.root, "run", "web:1", "--name", "web1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "kiln.toml: is a character device (a symlink to /dev/zero)" in result.stderr
    assert "Traceback" not in result.stderr


# loading: strict values, the pipeline of after, a line for every problem


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as raised:
        policy.load(path)
    assert raised.value.exit_code == 2
    assert raised.value.message.startswith("policy file has ")
    return [str(problem) for problem in raised.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[retention]\nkeep_last = "5"\n', ":2: retention.keep_last: Input should be a valid "),
        ("[retention]\nkeep_last = true\n", ":2: retention.keep_last: Input should be a valid "),
        ('[trust]\nrequire_signatures = "yes"\n', ":2: trust.require_signatures: "),
        ('[channels.prod]\ntests = "true"\n', ":2: channels.prod.tests: "),
        ("[channels.prod]\nconverge = 1\n", ":2: channels.prod.converge: "),
        ('[channels]\nopen = "yes"\n', ":2: channels.open: "),
    ],
)
def test_a_value_of_the_wrong_type_is_never_converted(
    tmp_path: Path, text: str, expected: str
) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(str(tmp_path / "kiln.toml") + expected), problem


def test_a_quoted_number_says_to_drop_the_quotes(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, '[retention]\nkeep_last = "5"\n')
    assert "not the string '5' (write a number, without quotes)" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[channels.prod]\nafter = "prod"\n',
            ":2: channels.prod.after: after = 'prod' names its own",
        ),
        (
            '[channels.staging]\n[channels.prod]\nafter = "stagng"\n',
            ":3: channels.prod.after: after = 'stagng' names a channel this file does not define "
            "(did you mean staging?)",
        ),
        (
            '[channels.a]\nafter = "c"\n[channels.b]\nafter = "a"\n[channels.c]\nafter = "b"\n'
            '[channels.d]\nafter = "a"\n',
            ":2: channels.a.after: after makes a cycle: a -> c -> b -> a",
        ),
        (
            '[channels.prod]\nafter = "staging"\n\n[channels.staging]\nafter = "prod"\n',
            ":2: channels.prod.after: after makes a cycle: prod -> staging -> prod",
        ),
    ],
)
def test_after_names_another_defined_channel_without_a_cycle(
    tmp_path: Path, text: str, expected: str
) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(str(tmp_path / "kiln.toml") + expected), problem


def test_a_pipeline_in_order_loads(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text(
        '[channels.dev]\n[channels.staging]\nafter = "dev"\n[channels.prod]\nafter = "staging"\n'
    )
    assert list(policy.load(path).model.channels.defined) == ["dev", "staging", "prod"]


BAD = {
    "an unknown table known only by its child": "[chanels.prod]\ntests = true\n",
    "a channel name": "[trust]\nkeys = []\n\n[channels.Prod]\ntests = true\n",
    "a channel called open": "[channels.open]\ntests = true\n",
    "TOML syntax": "[trust]\nkeys = [\n",
    "an inline table": '[channels]\nprod = { tests = "yes" }\n',
    "a NUL in a key file": '[trust]\nkeys = ["a\\u0000"]\n',
    "a duration": '[channels.prod]\nsoak = "1y"\n',
    "a table that is a value": "channels = 1\n",
    "an integer too long to read": "[retention]\n\nkeep_last = " + "9" * 5000 + "\n",
    "nesting too deep to parse": "[retention]\n\nkeep_last = " + "[" * 2000 + "]" * 2000 + "\n",
    "every problem at once": '[retention]\nkeep_last = "5"\n[channels.prod]\nafter = "prod"\n'
    'tests = "true"\n[trust]\nrequire_signatures = "yes"\nkey = []\n',
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_policy_problem_names_its_line(tmp_path: Path, case: str) -> None:
    found = problems_of(tmp_path, BAD[case])
    file = str(tmp_path / "kiln.toml")
    for problem in found:
        where = problem[len(file) :].split(":")
        assert problem.startswith(file + ":") and where[1].isdigit(), problem


def test_every_problem_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    found = problems_of(tmp_path, BAD["every problem at once"])
    lines = [int(problem.split(":")[1]) for problem in found]
    assert lines == [2, 4, 5, 7, 8], found


def test_a_channel_name_the_policy_refuses_says_why(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[channels.Prod]\n[channels.prod]\nafter = "x" \nsoak = "1h"\n')
    assert [problem.split(": ")[1] for problem in found] == ["channels.Prod", "channels.prod.after"]
    assert "'Prod' is not a channel name: a channel name is lower-case" in found[0]
    assert "after = 'x' names a channel this file does not define" in found[1]


def test_the_toml_parser_s_problems_are_told_of_a_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_bytes(b"[trust]\nkeys = []\n\xff\n")
    with pytest.raises(RecipeError) as raised:
        policy.load(path)
    assert str(raised.value.problems[0]).endswith(
        ":3: not UTF-8 text (byte 18): is this a policy file?"
    )
    assert "recipe" not in raised.value.message


def test_registry_and_schedule_tables_are_checked_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text(
        '[registry]\nurl = "docker://127.0.0.1:5000/team"\n\n'
        '[schedule]\nrefresh = "daily"\nprove = "30 2 * * 0"\n'
    )
    loaded = policy.load(path)
    assert loaded.registry.url == "docker://127.0.0.1:5000/team"
    assert policy.cron(loaded.schedule.refresh or "") == "0 3 * * *"
    assert loaded.schedule.prove == "30 2 * * 0"

    path.write_text(
        '[registry]\nurl = "docker://127.0.0.1:5000/team/web:3"\n\n'
        '[schedule]\nrefresh = "sometimes"\n'
    )
    with pytest.raises(RecipeError) as caught:
        policy.load(path)
    text = str(caught.value)
    assert f"{path}:2" in text and "no tag or digest" in text
    assert f"{path}:5" in text and "hourly, daily, weekly" in text
