"""Signing commands: `kiln key generate`, `kiln sign`, `kiln verify`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.markup import escape

from kiln.cli.groups import Group
from kiln.cli.output import console, json_flag, policy_option, print_json
from kiln.errors import BadInput

PASSWORD_ENV = "KILN_KEY_PASSWORD"


def _password(confirm: bool) -> bytes | None:
    """KILN_KEY_PASSWORD, else asked for on a terminal; None when neither is there."""
    given = os.environ.get(PASSWORD_ENV)
    if given is not None:
        return given.encode()
    if not sys.stdin.isatty():
        return None
    typed: str = click.prompt(
        "password for the private key", hide_input=True, confirmation_prompt=confirm, default=""
    )
    return typed.encode()


@click.group(cls=Group)
def key() -> None:
    """Make the ECDSA P-256 key pairs kiln signs images with."""


@key.command()
@click.option(
    "--output",
    "prefix",
    type=click.Path(path_type=Path),
    metavar="PREFIX",
    help="write PREFIX.key and PREFIX.pub [default: $KILN_HOME/keys/kiln]",
)
@click.option("--force", is_flag=True, help="replace an existing key pair")
@click.option(
    "--no-password",
    is_flag=True,
    help="write the private key unencrypted (by default it is encrypted with "
    f"{PASSWORD_ENV}, or a password asked for on a terminal)",
)
@json_flag
def generate(prefix: Path | None, force: bool, no_password: bool, as_json: bool) -> None:
    """Make a key pair: PREFIX.key (private, encrypted PKCS#8 PEM, mode 0600) and
    PREFIX.pub (public, PEM). Give PREFIX.pub to whoever verifies: list it under
    [trust] keys in kiln.toml."""
    from kiln.app import signing as use
    from kiln.app.workspace import with_workspace

    if no_password:
        if os.environ.get(PASSWORD_ENV):
            raise BadInput(f"--no-password, but {PASSWORD_ENV} is set: which one is meant?")
        password = None
    else:
        password = _password(confirm=True)
        if password is None:
            raise BadInput(
                "no password for the private key",
                hint=f"set {PASSWORD_ENV}, run on a terminal to be asked, or give --no-password",
            )
    made = with_workspace(use.generate_key, prefix, password, force)
    if as_json:
        print_json(made.to_json())
        return
    console.print(f"private key  {made.private_key}", highlight=False)
    console.print(f"public key   {made.public_key}", highlight=False)
    console.print(f"key id       {made.key_id}", highlight=False)


@click.command()
@click.argument("ref")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the private key [default: $KILN_HOME/keys/kiln.key]; its password comes from "
    f"{PASSWORD_ENV} (or is asked for on a terminal)",
)
@json_flag
def sign(ref: str, key_file: Path | None, as_json: bool) -> None:
    """Sign the image REF names (its manifest digest), cosign-style: the signature is
    stored in kiln's OCI layout under the tag sha256-<hex>.sig, so it travels with
    the image (skopeo copy oci:$KILN_HOME/oci:sha256-<hex>.sig ...)."""
    from kiln.app import signing as use
    from kiln.app.workspace import with_workspace

    signed = with_workspace(use.sign_image, ref, key_file, _password(confirm=False))
    if as_json:
        print_json(signed.to_json())
        return
    console.print(
        f"signed {signed.ref} ({signed.digest}) with key {signed.key_id}; "
        f"{signed.tag} holds {signed.signatures} signature{'s' if signed.signatures != 1 else ''}",
        highlight=False,
    )


@click.command()
@click.argument("ref")
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="a trusted public key (PEM; repeatable) [default: the policy's [trust] keys]",
)
@policy_option("whose [trust] keys to use")
@json_flag
def verify(ref: str, keys: tuple[Path, ...], policy_file: Path | None, as_json: bool) -> None:
    """Check that REF carries a valid signature by a trusted key over its own digest, and
    that its stored manifest, config and layers are the signed bytes. Exit 1 if not."""
    from kiln.app import signing as use
    from kiln.app.workspace import with_workspace

    found = with_workspace(use.verify_image, ref, keys, policy_file)
    if as_json:
        print_json(found.to_json())
    elif found.ok:
        console.print(
            f"[green]verified[/] {escape(found.ref)} ({found.digest}): signed by "
            + ", ".join(found.key_ids),
            highlight=False,
        )
    else:
        console.print(f"[red]not verified[/] {escape(found.ref)} ({found.digest})", highlight=False)
        for problem in found.problems:
            console.print(f"  {escape(problem)}", highlight=False)
    if not found.ok:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(key)
    group.add_command(sign)
    group.add_command(verify)
