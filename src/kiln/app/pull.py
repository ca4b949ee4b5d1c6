"""`kiln pull`: an image from a registry or an OCI layout folder into this store and the
catalog, with its parents and everything that hangs off it.

1. The manifest is read and its digest taken.
2. skopeo copies the image into a scratch layout (kiln.store.incoming) while kiln refuses
   a digest the catalog has revoked (before anything of it enters the store) and reads
   what hangs off it: the provenance names the image and its parent, whose manifest,
   config and attachments come next, up to a parent this store has (a child's layers are
   its parents' and one more, so the one copy brings every layer).
3. Every new blob is hashed before it enters the store; the trust policy is applied to
   the image asked for; then the lineage is recorded from the base down, each tagged with
   its referrers: a new catalog row for an image the catalog has not seen, or, for a
   catalog shared with the store that baked it, the note that this store holds it now.

Pulling what is here already changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kiln import refs
from kiln.app import pulledrow
from kiln.app.transfer import destination
from kiln.app.workspace import Workspace
from kiln.catalog.lookup import ImageRow, Revoked, revoked_hint
from kiln.errors import BadInput, KilnError, NotFound
from kiln.lifecycle import trust
from kiln.store import remote, transfer
from kiln.store.artefacts import KIND
from kiln.store.gc import store_in_use
from kiln.store.incoming import incoming
from kiln.store.layout import MEDIA_MANIFEST, Descriptor, Layout, signature_tag
from kiln.store.registry import Client
from kiln.store.remote import Folder, Location, Registry

if TYPE_CHECKING:  # the catalog's writers load SQLAlchemy: only once they are needed
    from kiln.catalog.holdings import Holder


@dataclass
class Pulled:
    ref: str
    digest: str
    source: str
    recorded: str  # new: a new catalog row | held: the catalog knew it | present: no change
    attachments: list[str]
    parents: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.digest,
            "source": self.source,
            "recorded": self.recorded,
            "attachments": self.attachments,
            "parents": self.parents,
            "notes": self.notes,
        }


class End(Protocol):
    """The place an image comes from: a registry repository or an OCI layout folder."""

    @property
    def where(self) -> Location: ...
    @property
    def insecure(self) -> bool: ...

    def image(self) -> tuple[str, bytes, dict[str, Any]]: ...
    def attachments(
        self, layout: Layout, digest: str
    ) -> tuple[list[Descriptor], Descriptor | None]: ...
    def parent(self, ref: str, digest: str) -> End: ...
    def source(self, digest: str) -> str: ...
    def fetch(self, layout: Layout, blob: Descriptor) -> None: ...


@dataclass
class RegistryEnd:
    client: Client
    where: Registry
    insecure: bool

    def image(self) -> tuple[str, bytes, dict[str, Any]]:
        return transfer.resolve(self.client, self.where)

    def attachments(
        self, layout: Layout, digest: str
    ) -> tuple[list[Descriptor], Descriptor | None]:
        return transfer.fetch_attachments(layout, self.client, self.where.repository, digest)

    def parent(self, ref: str, digest: str) -> RegistryEnd:
        beside = self.where.sibling(ref.partition(":")[0]).at(digest=digest)
        return RegistryEnd(self.client, beside, self.insecure)

    def source(self, digest: str) -> str:
        return f"docker://{self.where.at(digest=digest).place}"

    def fetch(self, layout: Layout, blob: Descriptor) -> None:
        self.client.fetch_blob(self.where.repository, blob, layout)


@dataclass
class FolderEnd:
    layout: Layout
    where: Folder
    insecure: bool = False

    def image(self) -> tuple[str, bytes, dict[str, Any]]:
        if not (self.where.path / "index.json").is_file():
            raise NotFound(f"{self.where.path} is not an OCI image layout (no index.json)")
        entry = self.layout.tagged(self.where.tag) if self.where.tag else None
        if entry is None:
            raise NotFound(
                f"{self.where} names no image",
                hint=f"give oci:{self.where.path}:TAG, TAG a ref name in its index.json",
            )
        data = transfer.read_verified(self.layout, entry.digest)
        return entry.digest, data, transfer.image_manifest(data, str(self.where))

    def attachments(
        self, layout: Layout, digest: str
    ) -> tuple[list[Descriptor], Descriptor | None]:
        return transfer.copy_attachments(self.layout, layout, digest)

    def parent(self, ref: str, digest: str) -> FolderEnd:
        return FolderEnd(self.layout, Folder(self.where.path, ref))

    def source(self, digest: str) -> str:
        return str(self.where)

    def fetch(self, layout: Layout, blob: Descriptor) -> None:
        layout.put_bytes(transfer.read_verified(self.layout, blob.digest), blob.media_type)


ArtefactRow = tuple[str, str, str, str]  # kind, media type, manifest digest, document digest


@dataclass
class Item:
    """One image of the lineage being pulled, with what came with it."""

    end: End
    digest: str
    data: bytes
    manifest: dict[str, Any]
    referrers: list[Descriptor]
    signature: Descriptor | None
    made: pulledrow.Origin
    name: str
    known: ImageRow | None  # the catalog's row of it (a catalog shared with its store)
    artefacts: list[ArtefactRow]  # its referrers as the catalog records them
    packages: list[tuple[str, str, str, str]]  # what its SBOM lists

    @property
    def blobs(self) -> list[Descriptor]:
        return transfer.blobs_of(self.manifest)


def pull(
    workspace: Workspace, source: str, *, as_name: str | None = None, insecure: bool = False
) -> Pulled:
    """Take the image at ``source`` (docker://, oci:, or NAME[:TAG] of the policy's
    registry) into this store and the catalog."""
    if as_name is not None and (refs.problem(as_name) or refs.parse(as_name).name != as_name):
        raise BadInput(f"--as takes an image name, not {as_name!r}", hint="kiln pull SRC --as web")
    if source.startswith(("docker://", "oci:")):
        where: Location = remote.parse(source, "source")
    else:
        parsed = refs.parse(source)
        team, policy_insecure = destination(workspace, None, parsed.name)
        assert isinstance(team, Registry)
        insecure = insecure or policy_insecure
        tag = str(parsed.version) if parsed.version else parsed.channel
        where = team.at(tag=tag, digest=parsed.digest)
    with store_in_use(workspace.home):
        if isinstance(where, Folder):
            return _pull(workspace, FolderEnd(Layout(where.path, tmp=where.path), where), as_name)
        client = Client(where, insecure)
        try:
            return _pull(workspace, RegistryEnd(client, where, insecure), as_name)
        finally:
            client.close()


def _pull(workspace: Workspace, end: End, as_name: str | None) -> Pulled:
    layout = workspace.layout
    digest, data, manifest = end.image()
    here = _present(workspace, layout, digest)
    if here is not None:
        _refuse_revoked(workspace, digest)
        return Pulled(here.ref, digest, str(end.where), "present", _kinds(layout, digest))
    blobs = transfer.blobs_of(manifest)
    with incoming(layout, blobs) as taking:
        with transfer.copying(
            end.source(digest), f"oci:{taking.folder}:pull", insecure=end.insecure
        ):
            _refuse_revoked(workspace, digest)  # before any of it enters the store
            item = _item(workspace, end, digest, data, manifest, as_name)
            parents, notes, anchor = _parents(workspace, item)
            from kiln.catalog import pulled  # SQLAlchemy loads, the catalog opens, meanwhile
            from kiln.catalog.holdings import Holder

            pulled.ready(workspace.catalog)
            holder = Holder.of(workspace.home)
        taking.take(blobs)
    layout.put_bytes(data, MEDIA_MANIFEST)
    for parent in parents:
        for blob in parent.blobs:
            if not layout.has_blob(blob.digest):
                parent.end.fetch(layout, blob)
        layout.put_bytes(parent.data, MEDIA_MANIFEST)
    lineage = [*parents, item]
    for each in lineage:
        if each.signature is not None:
            layout.tag(signature_tag(each.digest), each.signature)
    trust.enforce(workspace.home, layout, digest, f"{item.name}:{item.made.version}")
    recorded: list[tuple[str, str]] = []
    for each in lineage:
        anchor = _record(workspace, each, anchor, holder, recorded)
    ref, how = recorded[-1]
    chain = [r for r, _how in recorded[:-1]]
    return Pulled(ref, digest, str(end.where), how, _kinds(layout, digest), chain, notes)


def _item(
    workspace: Workspace,
    end: End,
    digest: str,
    data: bytes,
    manifest: dict[str, Any],
    as_name: str | None,
) -> Item:
    layout = workspace.layout
    referrers, signature = end.attachments(layout, digest)
    rows = _artefact_rows(layout, referrers)
    documents = {kind: layout.read_bytes(blob) for kind, _media, _manifest, blob in rows}
    if "provenance" not in documents:
        raise KilnError(
            f"{end.where} has no kiln provenance attached: kiln pulls images kiln baked",
            hint="push it with kiln push, which sends the provenance, SBOM and lock along",
        )
    made = pulledrow.origin(documents["provenance"], digest, str(end.where))
    name = as_name or made.name
    known = _known(workspace, name, digest)
    packages = pulledrow.packages(documents.get("sbom"), str(end.where))
    return Item(
        end, digest, data, manifest, referrers, signature, made, name, known, rows, packages
    )


def _parents(workspace: Workspace, item: Item) -> tuple[list[Item], list[str], int | None]:
    """The lineage above ``item`` that this store lacks, the base first; notes for a
    parent its source does not have; the id of the nearest ancestor this store has."""
    found: list[Item] = []
    current = item
    while current.made.parent_ref is not None and current.made.parent_digest is not None:
        ref, digest = current.made.parent_ref, current.made.parent_digest
        here = _present(workspace, workspace.layout, digest)
        if here is not None:
            return found[::-1], [], here.id
        end = current.end.parent(ref, digest)
        try:
            parent_digest, data, manifest = end.image()
        except (NotFound, KilnError) as exc:
            if isinstance(exc, NotFound) or "names no image" in exc.message:
                note = f"the parent {ref} ({digest}) is not at {end.where}: recorded without it"
                return found[::-1], [note], None
            raise
        if parent_digest != digest:
            raise KilnError(f"{end.where} is {parent_digest}, not the parent {digest}: refused")
        _refuse_revoked(workspace, digest)
        current = _item(workspace, end, digest, data, manifest, None)
        found.append(current)
    return found[::-1], [], None


def _record(
    workspace: Workspace,
    item: Item,
    parent_id: int | None,
    holder: Holder,
    recorded: list[tuple[str, str]],
) -> int:
    from kiln.catalog import baking, pulled
    from kiln.catalog.baking import NewVersion

    layout = workspace.layout
    manifest = Descriptor(MEDIA_MANIFEST, item.digest, len(item.data))
    source = str(item.end.where)
    known = item.known or _present(workspace, layout, item.digest)
    if known is not None:
        layout.tag(known.ref, manifest, item.referrers)
        pulled.held_here(workspace.catalog, known.id, known.ref, holder, source=source)
        recorded.append((known.ref, "held"))
        return known.id
    made = item.made
    new = NewVersion(
        name=item.name,
        digest=item.digest,
        config_digest=item.manifest["config"]["digest"],
        parent_id=parent_id if made.parent_ref else None,
        cache_key=made.cache_key,
        recipe_path=made.recipe,
        recipe_digest=made.recipe_digest,
        origin=made.origin,
        created=made.finished,
        size=pulledrow.layer_size(item.manifest),
        seconds=(made.finished - made.started).total_seconds(),
        packages=item.packages,
    )
    image_id, version = pulled.take(workspace.catalog, new, made.version, holder)
    ref = f"{item.name}:{version}"
    try:
        layout.tag(ref, manifest, item.referrers)
        baking.confirm(workspace.catalog, image_id, ref, item.artefacts, "pulled", source=source)
    except BaseException:
        baking.take_back(workspace.catalog, image_id)
        raise
    recorded.append((ref, "new"))
    return image_id


def _refuse_revoked(workspace: Workspace, digest: str) -> None:
    """Revoked (exit 1) when the catalog has revoked an image with this digest."""
    lookup = workspace.lookup
    revoked = lookup.revoked_images()
    if not revoked:
        return
    for image_id, row in lookup.by_ids(list(revoked)).items():
        if row.digest == digest:
            revocation = revoked[image_id]
            raise Revoked(
                f"{revocation.describe(row.ref)}: {digest} is not pulled",
                hint=revoked_hint(revocation),
            )


def _present(workspace: Workspace, layout: Layout, digest: str) -> ImageRow | None:
    """The catalog's image this store has tagged with ``digest``, if any."""
    for ref, descriptor in layout.refs().items():
        if descriptor.digest == digest:
            found = _known(workspace, ref.partition(":")[0], digest)
            if found is not None and found.ref == ref:
                return found
    return None


def _known(workspace: Workspace, name: str, digest: str) -> ImageRow | None:
    """The catalog's row of ``name`` with ``digest``."""
    try:
        return workspace.lookup.image(refs.Ref(name, digest=digest), usable=False)
    except NotFound:
        return None


def _artefact_rows(layout: Layout, referrers: list[Descriptor]) -> list[ArtefactRow]:
    """The catalog's artefact rows, as a bake writes them: the document's blob is the
    last one listed (an inventory lists its parents' first)."""
    rows = []
    for referrer in referrers:
        document = json.loads(layout.read_bytes(referrer.digest))["layers"][-1]
        kind = dict(referrer.annotations).get(KIND, "")
        rows.append((kind, document["mediaType"], referrer.digest, document["digest"]))
    return rows


def _kinds(layout: Layout, digest: str) -> list[str]:
    return sorted(
        str((e.get("annotations") or {}).get(KIND)) for e in transfer.attached(layout, digest)
    )
