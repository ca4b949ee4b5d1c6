"""`kiln push` and `kiln pull`: images and their attachments to and from registries and
OCI layout folders (docs/sharing.md)."""

from __future__ import annotations

import click

from kiln.cli.output import console, json_flag, print_json

INSECURE_HELP = "plain HTTP, no TLS: for a registry on loopback only"


@click.command()
@click.argument("ref")
@click.argument("dest", required=False)
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
@click.option(
    "--all-channels", is_flag=True, help="REF is a name: push every image its channels point at"
)
@json_flag
def push(ref: str, dest: str | None, insecure: bool, all_channels: bool, as_json: bool) -> None:
    """Push REF with its parents, signatures, SBOM, provenance and lock to DEST:
    docker://HOST/REPO[:TAG] (TAG: the version) or oci:DIR[:TAG]; without DEST, to the
    policy's [registry] url. Credentials come from the containers auth file
    (REGISTRY_AUTH_FILE, else ~/.config/containers/auth.json)."""
    from kiln.app import transfer
    from kiln.app.workspace import with_workspace

    done = with_workspace(transfer.push, ref, dest, insecure=insecure, all_channels=all_channels)
    if as_json:
        print_json([p.to_json() for p in done])
        return
    for pushed in done:
        kinds = ", ".join(pushed.attachments) or "nothing attached"
        console.print(f"pushed {pushed.ref} to {pushed.to} ({kinds})", highlight=False)


@click.command()
@click.argument("source")
@click.option("--as", "as_name", metavar="NAME", help="record the image under this name")
@click.option("--insecure", is_flag=True, help=INSECURE_HELP)
@json_flag
def pull(source: str, as_name: str | None, insecure: bool, as_json: bool) -> None:
    """Pull SOURCE (docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG], or NAME[:TAG] of the
    policy's [registry] url) into this store with its parents and attachments: every blob
    verified, a revoked digest refused, the trust policy applied."""
    from kiln.app import pull as use
    from kiln.app.workspace import with_workspace

    done = with_workspace(use.pull, source, as_name=as_name, insecure=insecure)
    if as_json:
        print_json(done.to_json())
        return
    for parent in done.parents:
        console.print(f"pulled {parent} (a parent)", highlight=False)
    what = {"new": "pulled", "held": "pulled the bytes of", "present": "already here:"}
    console.print(f"{what[done.recorded]} {done.ref} ({done.digest})", highlight=False)
    for note in done.notes:
        console.print(f"note: {note}", highlight=False)


def register(group: click.Group) -> None:
    for command in (push, pull):
        group.add_command(command)
