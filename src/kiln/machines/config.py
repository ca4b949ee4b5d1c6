"""Config values a machine is launched with: checked against the contract, then rendered.

Values come from ``--config FILE`` (a TOML table of ``key = "value"``) and ``--set
KEY=VALUE`` (which wins). ``--set KEY=-`` reads the value from standard input and ``--set
KEY=@PATH`` from a file (one trailing newline dropped), so a secret need not appear on a
command line, where ``ps`` and shell history show it. Every problem is reported at once
and nothing starts. Plain
values reach the machine as an environment file and as cloud-init NoCloud seed data;
secrets are kept apart and only ever handed to systemd-nspawn as credentials.
"""

from __future__ import annotations

import getpass
import json
import re
import secrets
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import BadInput, NotFound, RecipeError
from kiln.machines.contract import Contract, Key
from kiln.recipe.limits import MAX_RECIPE_BYTES, read_regular

MAX_VALUE_BYTES = 64 << 10  # one value from standard input or a file (a key, a token)
STDIN = "-"
FROM_FILE = "@"
SET_RE = re.compile(r"^(?P<key>[^=\s]+)=(?P<value>.*)$", re.DOTALL)
# systemd's EnvironmentFile= and sh both read "..." with these four escaped
ENV_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "$": "\\$", "`": "\\`"})


class ConfigError(BadInput):
    """Config values that do not fit the image's runtime contract."""

    def __init__(self, image: str, problems: Sequence[str], hint: str | None = None) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"config for {image} has {count} problem{'s' if count != 1 else ''}"
        super().__init__(
            head + "\n" + "\n".join(f"  {p}" for p in self.problems),
            hint=hint or f"'kiln inspect {image}' shows its runtime contract; nothing was started",
        )


@dataclass(frozen=True)
class Values:
    plain: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    generated: tuple[str, ...] = ()  # keys kiln made up (kiln test), plain or secret


def _from_file(path: Path, problems: list[str]) -> dict[str, str]:
    try:
        # a regular file of bounded size: --config /dev/zero or a FIFO must not hang kiln run
        raw = tomllib.loads(read_regular(path, MAX_RECIPE_BYTES, "config file").decode())
    except NotFound:
        problems.append(f"--config {path}: No such file or directory")
        return {}
    except RecipeError as exc:
        problems += [f"--config {p.file}: {p.message}" for p in exc.problems]
        return {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        problems.append(f"--config {path}: not a TOML file: {exc}")
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            problems.append(f"--config {path}: {key}: a value is a string, number or boolean")
    return out


def _strip_newline(data: bytes) -> bytes:
    """One trailing newline (LF or CRLF) goes: what echo and editors add to a file."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def read_stdin(key: str) -> bytes:
    """A value from standard input: asked for without echo on a terminal, else read to
    its end (at most one byte more than the limit, so the limit can be reported)."""
    if sys.stdin is None:
        return b""
    if sys.stdin.isatty():
        return getpass.getpass(f"{key}: ").encode()
    return sys.stdin.buffer.read(MAX_VALUE_BYTES + 1)


def _value_from_file(key: str, path: str, problems: list[str]) -> str | None:
    where = f"--set {key}=@{path}"
    if not path:
        problems.append(f"{where}: give a file after '@'")
        return None
    try:
        data = read_regular(Path(path), MAX_VALUE_BYTES, "value file")
    except NotFound:
        problems.append(f"{where}: No such file or directory")
        return None
    except RecipeError as exc:
        problems += [f"{where}: {p.message}" for p in exc.problems]
        return None
    return _decode(where, _strip_newline(data), problems)


def _decode(where: str, data: bytes, problems: list[str]) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        problems.append(f"{where}: the value is not UTF-8 text")
        return None


def _from_sets(
    sets: Sequence[str], problems: list[str], stdin: Callable[[str], bytes] = read_stdin
) -> dict[str, str]:
    out: dict[str, str] = {}
    from_stdin: list[str] = []
    for item in sets:
        match = SET_RE.match(item)
        if match is None:
            problems.append(f"--set {item.split('=', 1)[0]!r}: give KEY=VALUE")
            continue
        key, value = match.group("key"), match.group("value")
        if value == STDIN:
            from_stdin.append(key)
            if len(from_stdin) > 1:
                problems.append(
                    f"--set {key}=-: standard input already holds {from_stdin[0]}'s value "
                    f"(one key may read it; give the others as --set KEY=@FILE)"
                )
                continue
            data = stdin(key)
            where = f"--set {key}=-"
            if len(data) > MAX_VALUE_BYTES:
                problems.append(f"{where}: a value may be at most {MAX_VALUE_BYTES} bytes")
                continue
            decoded = _decode(where, _strip_newline(data), problems)
        elif value.startswith(FROM_FILE):
            decoded = _value_from_file(key, value[1:], problems)
        else:
            decoded = value
        if decoded is not None:
            out[key] = decoded
    return out


def resolve(
    image: str,
    contract: Contract,
    sets: Sequence[str] = (),
    config_file: Path | None = None,
    generate: bool = False,
    stdin: Callable[[str], bytes] = read_stdin,
) -> Values:
    """Check given values against the contract; fill in defaults (and, with ``generate``,
    throw-away values for required keys nobody gave: kiln test). ``stdin`` gives the bytes
    of a ``--set KEY=-`` value."""
    problems: list[str] = []
    given = _from_file(config_file, problems) if config_file else {}
    given.update(_from_sets(sets, problems, stdin))
    known = ", ".join(sorted(contract.keys)) or "none"
    for unknown in sorted(given.keys() - contract.keys.keys()):
        shown = unknown if unknown.isprintable() else repr(unknown)
        problems.append(f"{shown}: unknown key (the image declares: {known})")
    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    generated: list[str] = []
    for name, key in sorted(contract.keys.items()):
        value = given.get(name, key.default)
        if value is None and key.required and generate:
            value = secrets.token_hex(16) if key.secret else f"test-{name}"
            generated.append(name)
        what = "secret" if key.secret else "key"
        # a secret from a file (or standard input), never on a command line ps shows
        given_as = f"--set {name}=@FILE" if key.secret else f"--set {name}=VALUE"
        if value is None:
            if key.required:
                problems.append(f"{name}: required {what} is missing: {given_as}")
            continue
        if "\0" in value:
            problems.append(f"{name}: a value cannot hold a NUL character")
        elif key.required and not value.strip():
            problems.append(f"{name}: required {what} is empty: {given_as}")
        elif not key.secret and ("\n" in value or "\r" in value):
            problems.append(f"{name}: a plain value is one line (secrets may span lines)")
        (hidden if key.secret else plain)[name] = value
    if problems:
        raise ConfigError(image, problems)
    return Values(plain, hidden, tuple(generated))


def resolve_secrets(
    machine: str,
    contract: Contract,
    keys: Sequence[str],
    sets: Sequence[str] = (),
    config_file: Path | None = None,
    stdin: Callable[[str], bytes] = read_stdin,
) -> dict[str, str]:
    """The secrets a stopped machine was launched with, given again for ``kiln start``.

    kiln keeps no secret on disk, so each of ``keys`` (the machine's secret keys) comes
    from --set or --config again, or from the image's default; plain values stay as the
    machine was launched with them, so giving one is refused rather than ignored."""
    problems: list[str] = []
    given = _from_file(config_file, problems) if config_file else {}
    given.update(_from_sets(sets, problems, stdin))
    for name in sorted(given.keys() - set(keys)):
        shown = name if name.isprintable() else repr(name)
        key = contract.keys.get(name)
        if key is not None and not key.secret:
            problems.append(
                f"{shown}: a plain value stays as the machine was launched with it "
                f"(kiln rm {machine}, then kiln run, to change it)"
            )
        else:
            listed = ", ".join(keys) or "none"
            problems.append(f"{shown}: not a secret of machine {machine} (it has: {listed})")
    out: dict[str, str] = {}
    for name in keys:
        value = given.get(name)
        if value is None and name in contract.keys:
            value = contract.keys[name].default
        if value is None:
            problems.append(
                f"{name}: secret is missing (kiln keeps none on disk): "
                f"--set {name}=- or --set {name}=@FILE"
            )
        elif "\0" in value:
            problems.append(f"{name}: a value cannot hold a NUL character")
        elif contract.keys.get(name, Key(name)).required and not value.strip():
            problems.append(f"{name}: required secret is empty")
        else:
            out[name] = value
    if problems:
        raise ConfigError(
            f"machine {machine}",
            problems,
            hint=f"'kiln ps --json' lists the secret keys of {machine}; nothing was started",
        )
    return out


def env_name(key: str) -> str:
    return key.upper()


def env_file(values: Values) -> str:
    """Plain values as KEY="value" lines, read alike by systemd's EnvironmentFile= and sh."""
    lines = [f'{env_name(k)}="{v.translate(ENV_ESCAPES)}"' for k, v in sorted(values.plain.items())]
    return "".join(line + "\n" for line in lines)


def _yaml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {_yaml(instance_id)}\nlocal-hostname: {_yaml(hostname)}\n"


DEFAULT_LOCALE = "C.UTF-8"  # in every glibc, generated by nobody; what the bake runs with
LOCALE_FILE = "/etc/default/locale"
_LANG_RE = re.compile(r"""^\s*(?:export\s+)?LANG=(['"]?)([^'"\s]*)\1\s*$""")


def image_locale(text: str) -> str | None:
    """LANG from an /etc/default/locale, or None when it sets none (minbase: a comment)."""
    found = None
    for line in text.splitlines():
        match = _LANG_RE.match(line)
        if match and match.group(2):
            found = match.group(2)
    return found


def user_data(machine: str, image: str, values: Values, locale: str = DEFAULT_LOCALE) -> str:
    """#cloud-config with the plain values (JSON strings are valid YAML scalars).

    ``locale`` is the image's own (so cloud-init's locale module keeps it), or C.UTF-8
    for an image that sets none: cloud-init would otherwise apply en_US.UTF-8, which a
    Debian image without that generated locale refuses (update-locale exits 255 and
    cloud-config.service fails, so the machine boots degraded).
    """
    lines = [
        "#cloud-config",
        f"# kiln machine {machine} from {image}: plain config values; secrets are systemd",
        "# credentials and never appear here.",
        f"locale: {_yaml(locale)}",
        "kiln:",
        f"  machine: {_yaml(machine)}",
        f"  image: {_yaml(image)}",
    ]
    if values.plain:
        lines.append("  config:")
        lines += [f"    {k}: {_yaml(v)}" for k, v in sorted(values.plain.items())]
    else:
        lines.append("  config: {}")
    return "\n".join(lines) + "\n"
