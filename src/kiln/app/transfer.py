"""`kiln push`: an image, its parents and everything that hangs off them from this store to
a registry (``docker://``) or an OCI layout folder (``oci:``).

The image goes by skopeo; while it goes, the attachments of the whole lineage (referrers
and signatures). Then its parents, each to the repository of its name beside the image's
(``team/web`` -> ``team/base``) under its version tag: their layers are the image's, so
they are mounted, not sent again. The catalog records each registry copy (kiln where,
kiln images), so another store sharing the catalog knows where to pull from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln import refs
from kiln.actor import actor
from kiln.app import resolve
from kiln.app.workspace import Workspace
from kiln.catalog import ledger
from kiln.catalog.lookup import ImageRow
from kiln.digests import digest_of
from kiln.errors import BadInput, KilnError, NotFound
from kiln.store import remote, transfer
from kiln.store.artefacts import KIND
from kiln.store.layout import MEDIA_MANIFEST, Descriptor, Layout, signature_tag
from kiln.store.registry import Client, parallel
from kiln.store.remote import Folder, Location, Registry


@dataclass
class Pushed:
    ref: str
    digest: str
    to: str
    tags: list[str]
    attachments: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "to": self.to,
            "tags": self.tags,
            "attachments": self.attachments,
        }


def destination(workspace: Workspace, given: str | None, name: str) -> tuple[Location, bool]:
    """Where image ``name`` goes or comes from: ``given``, else under the policy's
    ``[registry] url``; and whether the policy allows plain HTTP to it."""
    if given is not None:
        return remote.parse(given, "destination"), False
    from kiln.lifecycle.policy import find

    policy = find(workspace.home)
    if policy.registry.url is None:
        raise BadInput(
            f"no registry for {name}: give docker://HOST/REPO[:TAG] or oci:DIR[:TAG]",
            hint="or name the team's registry in the policy file: [registry] url = "
            '"docker://HOST/PREFIX" (docs/sharing.md)',
        )
    return remote.registry_at(policy.registry.url, name), policy.registry.insecure


def push(
    workspace: Workspace,
    ref: str,
    dest: str | None = None,
    *,
    insecure: bool = False,
    all_channels: bool = False,
) -> list[Pushed]:
    """Push ``ref`` (with ``all_channels``: every image a channel of the name ``ref``
    points at, tagged with its channels too) with its parents, the base first."""
    if all_channels:
        targets = _channel_images(workspace, ref)
    else:
        row = resolve.image(workspace, ref)  # a revoked image is not sent anywhere
        targets = {row.id: (row, [])}
    out: list[Pushed] = []
    for row, channels in targets.values():
        where, policy_insecure = destination(workspace, dest, row.name)
        chain = _lineage(workspace, row)
        if isinstance(where, Folder):
            out += [_push_to_folder(workspace, image, where, image is row) for image in chain]
        else:
            out += _push_chain(workspace, chain, where, channels, insecure or policy_insecure)
    return out


def _channel_images(workspace: Workspace, name: str) -> dict[int, tuple[ImageRow, list[str]]]:
    if refs.problem(name) is not None or refs.parse(name).name != name:
        raise BadInput(
            f"--all-channels takes an image name, not {name!r}",
            hint="kiln push --all-channels web",
        )
    found: dict[int, tuple[ImageRow, list[str]]] = {}
    for head in workspace.lookup.heads(name):
        image = head.current
        if image is not None:
            found.setdefault(image.id, (image, []))[1].append(head.assignment.channel)
    if not found:
        raise NotFound(f"no channel of {name} points at an image", hint=f"kiln channels {name}")
    return found


def _lineage(workspace: Workspace, row: ImageRow) -> list[ImageRow]:
    """``row``'s parents, the base first, then ``row``."""
    chain = [row]
    while chain[0].parent_id is not None:
        chain.insert(0, workspace.lookup.by_id(chain[0].parent_id))
    return chain


def _push_chain(
    workspace: Workspace,
    chain: list[ImageRow],
    where: Registry,
    channels: list[str],
    insecure: bool,
) -> list[Pushed]:
    """The last of ``chain`` to ``where`` by skopeo, the attachments of all of it while
    skopeo runs, then the parents; one catalog write records every registry copy."""
    layout = workspace.layout
    row = chain[-1]
    tag = where.tag or str(row.version)
    places = {image.id: where if image is row else where.sibling(image.name) for image in chain}
    sent: dict[int, list[str]] = {}
    client = Client(where, insecure)
    try:
        target = f"docker://{where.at(tag=tag).place}"
        with transfer.copying(f"oci:{layout.root}:{row.ref}", target, insecure=insecure):
            client.connect()  # the HTTP client loads and logs in meanwhile

        def attach(image: ImageRow) -> None:
            repository = places[image.id].repository
            sent[image.id] = transfer.push_attachments(layout, client, repository, image.digest)

        parallel(attach, chain)  # after the image: beside skopeo's upload it slows both
        for image in chain[:-1]:
            transfer.push_parent(
                layout, client, places[image.id], where, image.digest, str(image.version)
            )
        found = client.manifest(where.repository, tag)
        data = found[0] if found else b""
        if digest_of(data) != row.digest:
            raise KilnError(
                f"the registry serves {where.at(tag=tag)} as {digest_of(data)}, "
                f"not {row.digest}: the push did not keep the digest"
            )
        for channel in channels:
            client.push_manifest(where.repository, channel, data, MEDIA_MANIFEST)
    finally:
        client.close()
    out = [
        Pushed(
            image.ref,
            image.digest,
            f"docker://{places[image.id].at(digest=image.digest).place}",
            [tag, *channels] if image is row else [str(image.version)],
            sent[image.id],
        )
        for image in chain
    ]
    copies = [(image.id, p.to) for image, p in zip(chain, out, strict=True)]
    with ledger.writing(workspace.home.catalog_url) as execute:
        ledger.record_copies(execute, copies, datetime.now(UTC), actor())
    return out


def _push_to_folder(workspace: Workspace, row: ImageRow, where: Folder, last: bool) -> Pushed:
    """``row`` into an OCI layout folder, tagged ``where.tag`` (the image asked for) or
    its ref (a parent), its attachments listed and its signature tagged beside it."""
    layout = workspace.layout
    tag = (where.tag if last else None) or row.ref
    with transfer.copying(f"oci:{layout.root}:{row.ref}", f"oci:{where.path}:{tag}"):
        pass
    dest = Layout(where.path, tmp=where.path)
    referrers, signature = transfer.copy_attachments(layout, dest, row.digest)
    manifest = Descriptor(MEDIA_MANIFEST, row.digest, len(layout.read_bytes(row.digest)))
    dest.tag(tag, manifest, referrers)
    if signature is not None:
        dest.tag(signature_tag(row.digest), signature)
    kinds = [dict(r.annotations).get(KIND, "") for r in referrers]
    signed = ["signature"] if signature else []
    return Pushed(row.ref, row.digest, f"oci:{where.path}:{tag}", [tag], kinds + signed)
