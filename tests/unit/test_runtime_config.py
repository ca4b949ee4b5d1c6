"""The runtime contract and the config a machine is launched with: pure checks and renders."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import BadInput, StoreError
from kiln.machines import config, converge, volumes
from kiln.machines.contract import (
    RUNTIME_LABEL,
    TESTS_LABEL,
    Contract,
    Key,
    commands_from_config,
    from_config,
    seconds,
)
from kiln.machines.folder import Folder, check_name
from kiln.recipe import models

WEB = Contract(
    state=("/var/lib/web",),
    keys={
        "site_title": Key("site_title", required=True),
        "api_token": Key("api_token", required=True, secret=True),
        "mode": Key("mode", default="production"),
        "extra": Key("extra"),
    },
)


def oci_config(labels: dict[str, str]) -> dict[str, Any]:
    return {"config": {"Labels": labels}}


def problems(**kwargs: Any) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.resolve("web:1", WEB, **kwargs)
    assert caught.value.exit_code == 2
    return caught.value.problems


# --- the contract, from the image's labels ---


def test_contract_round_trips_through_the_label() -> None:
    runtime = models.Runtime.model_validate(
        {
            "state": ["/var/lib/web"],
            "config": {
                "site_title": {"required": True, "description": "the title"},
                "api_token": {"required": True, "secret": True},
                "mode": {"default": "dev"},
            },
            "health": {"http": "http://127.0.0.1/", "timeout": "1500ms"},
        }
    )
    label = json.dumps(runtime.model_dump(mode="json"), sort_keys=True)
    contract = from_config(oci_config({RUNTIME_LABEL: label}))
    assert contract.state == ("/var/lib/web",)
    assert contract.keys["site_title"] == Key("site_title", True, None, False, "the title")
    assert contract.keys["mode"].default == "dev"
    assert contract.secret_keys == ["api_token"]
    assert contract.health is not None
    assert contract.health.http == "http://127.0.0.1/" and contract.health.timeout == 1.5


def test_an_image_without_a_runtime_has_an_empty_contract() -> None:
    assert from_config({"config": {}}) == Contract()
    assert from_config({}) == Contract()


def test_a_damaged_label_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        from_config(oci_config({RUNTIME_LABEL: "{not json"}))
    with pytest.raises(StoreError):
        from_config(oci_config({RUNTIME_LABEL: json.dumps({"health": {"http": "x"}})}))


def test_tests_label() -> None:
    label = json.dumps(models.Tests(commands=("true", "test -f /x")).model_dump(mode="json"))
    assert commands_from_config(oci_config({TESTS_LABEL: label})) == ("true", "test -f /x")
    assert commands_from_config(oci_config({})) is None


@pytest.mark.parametrize(
    ("text", "value"), [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("7", 7.0), ("1.5s", 1.5)]
)
def test_durations(text: str, value: float) -> None:
    assert seconds(text) == value


# --- values against the contract ---


def test_values_split_into_plain_and_secret_with_defaults() -> None:
    values = config.resolve("web:1", WEB, ["site_title=My site", "api_token=s3cret=x"])
    assert values.plain == {"site_title": "My site", "mode": "production"}
    assert values.secrets == {"api_token": "s3cret=x"}, "only the first '=' splits"
    assert values.generated == ()


def test_every_problem_is_reported_at_once() -> None:
    found = problems(sets=["colour=red", "novalue", "site_title=a\nb"])
    assert found == [
        "--set 'novalue': give KEY=VALUE",
        "colour: unknown key (the image declares: api_token, extra, mode, site_title)",
        "api_token: required secret is missing: --set api_token=@FILE",
        "site_title: a plain value is one line (secrets may span lines)",
    ]


def test_missing_required_keys_are_named() -> None:
    found = problems()
    assert "api_token: required secret is missing: --set api_token=@FILE" in found
    assert "site_title: required key is missing: --set site_title=VALUE" in found


def test_config_file_and_set_wins(tmp_path: Path) -> None:
    file = tmp_path / "web.toml"
    file.write_text('site_title = "From file"\napi_token = "t"\nmode = 3\nextra = true\n')
    values = config.resolve("web:1", WEB, ["site_title=From --set"], file)
    assert values.plain == {"site_title": "From --set", "mode": "3", "extra": "true"}


def test_bad_config_files(tmp_path: Path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text('api_token = "t"\nsite_title = "x"\n[extra]\nx = 1\n')
    assert problems(config_file=nested) == [
        f"--config {nested}: extra: a value is a string, number or boolean"
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text("site_title = \n")
    assert problems(config_file=broken, sets=["api_token=t"])[0].startswith(
        f"--config {broken}: not a TOML file"
    )
    missing = problems(config_file=tmp_path / "nope.toml", sets=["api_token=t", "site_title=x"])
    assert missing == [f"--config {tmp_path / 'nope.toml'}: No such file or directory"]


def test_empty_or_nul_values_for_required_keys_are_refused(tmp_path: Path) -> None:
    found = problems(sets=["site_title=", "api_token=  "])
    assert found == [
        "api_token: required secret is empty: --set api_token=@FILE",
        "site_title: required key is empty: --set site_title=VALUE",
    ]
    assert problems(sets=["site_title=a\0b", "api_token=t"]) == [
        "site_title: a value cannot hold a NUL character"
    ]
    assert (
        config.resolve("web:1", WEB, ["site_title=x", "api_token=t", "extra="]).plain["extra"] == ""
    ), "an optional key may be empty"


def test_a_config_file_that_is_a_device_or_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    [problem] = problems(config_file=fifo, sets=["site_title=x", "api_token=t"])
    assert problem.startswith(f"--config {fifo}: is a FIFO")
    [problem] = problems(config_file=Path("/dev/zero"), sets=["site_title=x", "api_token=t"])
    assert "character device" in problem


def test_generated_values_for_kiln_test() -> None:
    values = config.resolve("web:1", WEB, ["site_title=Given"], generate=True)
    assert values.plain["site_title"] == "Given"
    assert len(values.secrets["api_token"]) == 32
    assert values.generated == ("api_token",)
    other = config.resolve("web:1", WEB, generate=True)
    assert other.plain["site_title"] == "test-site_title"
    assert other.secrets["api_token"] != values.secrets["api_token"]


def stdin_of(data: bytes) -> Any:
    """A standard input holding ``data``, that counts how often it is read."""
    reads: list[str] = []

    def read(key: str) -> bytes:
        reads.append(key)
        return data

    read.reads = reads  # type: ignore[attr-defined]
    return read


def test_a_secret_from_standard_input_loses_one_trailing_newline() -> None:
    stdin = stdin_of(b"s3cret\n\n")
    values = config.resolve("web:1", WEB, ["site_title=x", "api_token=-"], stdin=stdin)
    assert values.secrets == {"api_token": "s3cret\n"}, "only one newline is stripped"
    assert stdin.reads == ["api_token"]
    crlf = config.resolve("web:1", WEB, ["site_title=x", "api_token=-"], stdin=stdin_of(b"t\r\n"))
    assert crlf.secrets == {"api_token": "t"}


def test_only_one_key_reads_standard_input() -> None:
    stdin = stdin_of(b"one")
    found = problems(sets=["site_title=-", "api_token=-"], stdin=stdin)
    assert found == [
        "--set api_token=-: standard input already holds site_title's value "
        "(one key may read it; give the others as --set KEY=@FILE)",
        "api_token: required secret is missing: --set api_token=@FILE",
    ]
    assert stdin.reads == ["site_title"]


def test_standard_input_is_bounded_and_text() -> None:
    big = stdin_of(b"x" * (config.MAX_VALUE_BYTES + 1))
    assert problems(sets=["site_title=x", "api_token=-"], stdin=big) == [
        f"--set api_token=-: a value may be at most {config.MAX_VALUE_BYTES} bytes",
        "api_token: required secret is missing: --set api_token=@FILE",
    ]
    binary = stdin_of(b"\xff\xfe")
    assert problems(sets=["site_title=x", "api_token=-"], stdin=binary)[0] == (
        "--set api_token=-: the value is not UTF-8 text"
    )
    assert problems(sets=["site_title=x", "api_token=-"], stdin=stdin_of(b"\n")) == [
        "api_token: required secret is empty: --set api_token=@FILE"
    ]


def test_a_secret_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_bytes(b"multi\nline secret\n")
    values = config.resolve("web:1", WEB, ["site_title=x", f"api_token=@{file}"])
    assert values.secrets == {"api_token": "multi\nline secret"}
    link = tmp_path / "link"
    link.symlink_to(file)
    again = config.resolve("web:1", WEB, ["site_title=x", f"api_token=@{link}"])
    assert again.secrets == values.secrets, "a symlink to a regular file is fine"


def test_value_files_must_be_small_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (config.MAX_VALUE_BYTES + 1))
    base = ["site_title=x"]
    [problem, _] = problems(sets=[*base, f"api_token=@{fifo}"])
    assert problem.startswith(f"--set api_token=@{fifo}: is a FIFO")
    [problem, _] = problems(sets=[*base, "api_token=@/dev/zero"])
    assert "character device" in problem
    [problem, _] = problems(sets=[*base, f"api_token=@{big}"])
    assert f"may be at most {config.MAX_VALUE_BYTES} bytes" in problem
    [problem, _] = problems(sets=[*base, f"api_token=@{tmp_path / 'nope'}"])
    assert problem == f"--set api_token=@{tmp_path / 'nope'}: No such file or directory"
    [problem, _] = problems(sets=[*base, "api_token=@"])
    assert problem == "--set api_token=@: give a file after '@'"
    folder_problem = problems(sets=[*base, f"api_token=@{tmp_path}"])[0]
    assert "not a regular file" in folder_problem


# --- what reaches the machine ---


def test_env_file_reads_back_the_same_in_sh() -> None:
    tricky = "a \"quoted\" $HOME `cmd` \\ back & <b> 'single'"
    values = config.Values(plain={"site_title": tricky, "mode": "x"}, secrets={"token": "s"})
    text = config.env_file(values)
    assert text.splitlines()[0] == 'MODE="x"'
    assert "token" not in text.lower()
    out = subprocess.run(
        ["/bin/sh", "-c", '. /dev/stdin; printf %s "$SITE_TITLE"'],
        input=text.encode(),
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert out.stdout.decode() == tricky


def test_seed_data() -> None:
    values = config.Values(plain={"site_title": 'Ünïcode "x"'}, secrets={"api_token": "s3cret"})
    user = config.user_data("web1", "web:3", values)
    assert user.startswith("#cloud-config\n")
    assert '    site_title: "Ünïcode \\"x\\""' in user
    assert "s3cret" not in user and "api_token" not in user
    meta = config.meta_data("kiln-web1-1234", "web1")
    assert meta == 'instance-id: "kiln-web1-1234"\nlocal-hostname: "web1"\n'


def test_the_seed_keeps_the_image_locale_or_asks_for_c_utf8() -> None:
    assert config.image_locale("#  File generated by update-locale\n") is None
    assert config.image_locale('LANG="de_DE.UTF-8"\nLANGUAGE=de\n') == "de_DE.UTF-8"
    assert config.image_locale("export LANG=fr_FR.UTF-8\n") == "fr_FR.UTF-8"
    assert config.image_locale("LANG=\n") is None
    user = config.user_data("web1", "web:3", config.Values())
    assert 'locale: "C.UTF-8"' in user.splitlines(), (
        "cloud-init's locale module needs no locale-gen"
    )
    assert 'locale: "de_DE.UTF-8"' in config.user_data("w", "w:1", config.Values(), "de_DE.UTF-8")


# --- names, volumes ---


@pytest.mark.parametrize("name", ["web", "web-1", "a", "x" * 63])
def test_machine_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["Web", "web_1", "-web", "web-", "web.1", "x" * 64, ""])
def test_bad_machine_names(name: str) -> None:
    with pytest.raises(BadInput):
        check_name(name)


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("/var/lib/web", "var-lib-web"),
        ("/srv/my-app/data/", "srv-my\\x2dapp-data"),
        ("/srv/.hidden", "srv-.hidden"),
        ("/.dot", "\\x2edot"),
        ("/", "-"),
    ],
)
def test_volume_folder_names(path: str, escaped: str) -> None:
    assert volumes.escape(path) == escaped


def test_volume_plan(tmp_path: Path) -> None:
    folder = Folder(tmp_path / "web1")
    plan = volumes.plan(folder, ("/var/lib/web", "/srv/data"), ["/srv/data=/mnt/data"])
    assert plan == [
        volumes.Volume("/srv/data", Path("/mnt/data"), False),
        volumes.Volume("/var/lib/web", folder.volumes / "var-lib-web", True),
    ]
    with pytest.raises(BadInput, match="not a state path of the image"):
        volumes.plan(folder, ("/var/lib/web",), ["/etc=/tmp/etc"])
    with pytest.raises(BadInput, match="give PATH=DIR"):
        volumes.plan(folder, ("/var/lib/web",), ["/var/lib/web"])


def test_a_new_volume_starts_as_the_image_has_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/web").mkdir(parents=True)
    (root / "var/lib/web/seed.txt").write_text("from the image")
    os.chmod(root / "var/lib/web", 0o750)
    volume = volumes.Volume("/var/lib/web", tmp_path / "vol", True)
    assert volumes.prepare(volume, root)
    assert (tmp_path / "vol/seed.txt").read_text() == "from the image"
    assert (tmp_path / "vol").stat().st_mode & 0o777 == 0o750
    (tmp_path / "vol/seed.txt").write_text("changed by the machine")
    assert not volumes.prepare(volume, root), "a volume with data is never seeded again"
    assert (tmp_path / "vol/seed.txt").read_text() == "changed by the machine"


# --- convergence snapshots ---


def test_snapshots_see_content_modes_and_deletions_not_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for folder in ("etc", "var/log", "var/lib/web", "srv"):
        (root / folder).mkdir(parents=True)
    (root / "etc/app.conf").write_text("a=1\n")
    (root / "etc/same").write_text("same\n")
    (root / "srv/gone").write_text("x")
    skip = converge.Skip.for_machine(["/var/lib/web"])
    before = converge.snapshot(root, skip)

    (root / "etc/app.conf").write_text("a=1\na=1\n")  # appended
    (root / "etc/same").unlink()
    (root / "etc/same").write_text("same\n")  # rewritten, unchanged
    (root / "srv/gone").unlink()
    (root / "srv/new").symlink_to("/etc/app.conf")
    os.chmod(root / "srv", 0o700)
    (root / "var/log/app.log").write_text("volatile")
    (root / "var/lib/web/data").write_text("state")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status-old").write_text("sealed away")
    changes = converge.diff(before, converge.snapshot(root, skip, before))

    assert [(c.path, c.change) for c in changes] == [
        ("/etc/app.conf", "modified"),
        ("/srv", "modified"),
        ("/srv/gone", "deleted"),
        ("/srv/new", "added"),
        ("/var/lib/dpkg", "added"),
    ]
    assert str(changes[1]) == "~ /srv (dir 0755 0:0 -> dir 0700 0:0)"
    assert str(changes[0]).startswith("~ /etc/app.conf (content ")


def test_run_help_recommends_stdin_and_files_for_secrets() -> None:
    from click.testing import CliRunner

    from kiln.cli.machines import run

    text = " ".join(CliRunner().invoke(run, ["--help"]).output.split())
    assert "KEY=- reads the value from standard input, KEY=@PATH from a file" in text
    assert "use them for secrets, since KEY=VALUE shows in ps and shell history" in text
