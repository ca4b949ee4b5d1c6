"""A group's inputs a member starts with: its secrets read from their sources, and the
values checked against the image's runtime contract.

A secret source is a file relative to the policy file's folder or a variable of kiln's own
environment (kiln.lifecycle.fleetpolicy); its value is read when a command starts members
and handed on in memory, never written to the policy file, the catalog or a machine's
folder. Every source that cannot be read is named by its key path, and nothing starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import BadInput, NotFound, RecipeError
from kiln.lifecycle.fleetpolicy import GroupSpec
from kiln.machines import config
from kiln.machines.contract import Contract
from kiln.recipe.limits import read_regular

if TYPE_CHECKING:
    from kiln.lifecycle.policy import Policy

# put before a value --set would read as '-' (standard input) or '@FILE' while the values
# are checked, and taken off again: the value itself reaches the machine
LITERAL = "_"


def _strip_newline(data: bytes) -> bytes:
    """One trailing newline (LF or CRLF) goes, as with ``kiln run --set KEY=@FILE``."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def read_secrets(
    policy: Policy, group: str, spec: GroupSpec, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The group's secrets from their sources: ``file`` relative to the policy file's folder
    (a regular file of bounded size, one trailing newline dropped), ``env`` from kiln's own
    environment. Every source that cannot be read is named by its key path at once
    (BadInput, exit 2), before anything starts."""
    env = os.environ if environ is None else environ
    folder = policy.path.parent if policy.path is not None else Path.cwd()
    where_file = f" ({policy.path})" if policy.path is not None else ""
    problems: list[str] = []
    out: dict[str, str] = {}
    for key, source in sorted(spec.secrets.items()):
        where = f"groups.{group}.secrets.{key}"
        if source.file is not None:
            path = folder / source.file
            try:
                data = read_regular(path, config.MAX_VALUE_BYTES, "secret file")
            except NotFound:
                problems.append(f"{where}: file = '{source.file}': no such file ({path})")
                continue
            except RecipeError as exc:
                problems += [f"{where}: file = '{source.file}': {p.message}" for p in exc.problems]
                continue
            except OSError as exc:
                problems.append(f"{where}: file = '{source.file}': {exc.strerror} ({path})")
                continue
            try:
                out[key] = _strip_newline(data).decode()
            except UnicodeDecodeError:
                problems.append(f"{where}: file = '{source.file}': the value is not UTF-8 text")
        else:
            assert source.env is not None
            value = env.get(source.env)
            if value is None:
                problems.append(
                    f"{where}: env = '{source.env}': kiln's environment has no {source.env}"
                )
            else:
                out[key] = value
    if problems:
        count = len(problems)
        raise BadInput(
            f"group {group}: {count} secret source{'s' if count != 1 else ''} cannot be read"
            f"{where_file}\n" + "\n".join(f"  {p}" for p in problems),
            hint="put the file there or set the variable in kiln's environment; "
            "nothing was started",
        )
    return out


def member_values(
    group: str, ref: str, contract: Contract, given: Mapping[str, str], policy: Policy
) -> config.Values:
    """The values a member starts with, checked against the image's contract exactly as
    ``kiln run --set`` values are (unknown keys, required ones missing, defaults). A value
    is the value itself here, never read as '-' (standard input) or '@FILE'."""
    shielded = {
        key: LITERAL + value
        if value == config.STDIN or value.startswith(config.FROM_FILE)
        else value
        for key, value in given.items()
    }
    sets = [f"{key}={value}" for key, value in sorted(shielded.items())]
    try:
        checked = config.resolve(ref, contract, sets)
    except config.ConfigError as exc:
        where = f"the policy {policy.path}" if policy.path else "the policy file"
        raise BadInput(
            f"group {group}: " + exc.message,
            hint=f"[groups.{group}] config and secrets in {where} must fit the image's runtime "
            f"contract (kiln inspect {ref} shows it); nothing was started",
        ) from None

    def real(values: Mapping[str, str]) -> dict[str, str]:
        return {key: given.get(key, value) for key, value in values.items()}

    return config.Values(real(checked.plain), real(checked.secrets))
