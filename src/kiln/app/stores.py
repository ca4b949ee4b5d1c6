"""This store in a catalog many stores share: the holder its writes name
(kiln.catalog.holdings), the rows it claims, and where each image's bytes are as kiln gc,
kiln fsck, kiln images and kiln where tell it.

A row baked before the catalog recorded holdings is held by no place ("unclaimed"); a
store claims it when it has the row's manifest blob in its layout, and any row its
index.json tags under the row's ref with the row's digest (those bytes are here, whoever
else holds them). kiln gc and kiln fsck claim, in the write transaction they open anyway;
a read command only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kiln.app.workspace import Workspace
from kiln.catalog import holdings
from kiln.catalog.holdings import REGISTRY, STORE, Holder, Holding
from kiln.catalog.lookup import Lookup
from kiln.store.layout import image_ref

if TYPE_CHECKING:  # kiln where and kiln images read holdings without loading retention
    from kiln.catalog.session import Session
    from kiln.lifecycle import retention


def holder(workspace: Workspace) -> Holder:
    """The store of the workspace's KILN_HOME, on this host."""
    return Holder.of(workspace.home)


def here(workspace: Workspace) -> str:
    """This store's id, for a command that only reads: "" while the store has none yet
    (no holding can name it then), so a read never makes ``store.id``."""
    home = workspace.home
    return home.store_id if home.store_id_file.exists() else ""


def tags(index: Mapping[str, Any]) -> dict[str, str]:
    """ref -> manifest digest of every image tag in a parsed index.json."""
    out: dict[str, str] = {}
    for entry in index.get("manifests", []):
        ref = image_ref(entry)
        if ref is not None:
            out[ref] = entry["digest"]
    return out


@dataclass
class Places:
    """Who holds what, read once: this store's id and every image's holdings."""

    here: str
    held: dict[int, list[Holding]] = field(default_factory=dict)
    ours: set[int] = field(init=False)  # the images this store holds (or claims)

    def __post_init__(self) -> None:
        self.ours = {
            image_id
            for image_id, found in self.held.items()
            if any(h.kind == STORE and h.place == self.here for h in found)
        }

    def mine(self, image_id: int) -> bool:
        return image_id in self.ours

    def other_stores(self, image_id: int) -> list[Holding]:
        return [h for h in self.held.get(image_id, []) if h.kind == STORE and h.place != self.here]

    def registries(self, image_id: int) -> list[Holding]:
        return [h for h in self.held.get(image_id, []) if h.kind == REGISTRY]

    def claimed(self, image_ids: Iterable[int]) -> None:
        """Count ``image_ids`` as this store's (what a claim just wrote, or would)."""
        self.ours.update(image_ids)

    def stores_json(self, image_id: int) -> list[dict[str, Any]]:
        return [h.to_json(self.here) for h in self.held.get(image_id, [])]

    def where(self, image_id: int) -> str:
        """Where the bytes are, in a word: ``here``, ``here+registry``, the other stores'
        hosts (``+registry`` when a registry holds them too), ``registry``, or ``-``."""
        return shown(self.stores_json(image_id))


def shown(stores: list[dict[str, Any]]) -> str:
    """An image's ``stores`` (as ``--json`` lists them) in a word, for a table column."""
    here = any(s["here"] for s in stores)
    registry = any(s["kind"] == REGISTRY for s in stores)
    if here:
        return "here+registry" if registry else "here"
    hosts = sorted({s["host"] or s["place"][:8] for s in stores if s["kind"] == STORE})
    if hosts:
        return ", ".join(hosts) + ("+registry" if registry else "")
    return "registry" if registry else "-"


def description(holding: Holding) -> str:
    """'store 1a2b3c4d on host-b (/var/lib/kiln)', or 'registry docker://...'."""
    if holding.kind == STORE:
        where = f" on {holding.host} ({holding.home})" if holding.host else ""
        return f"store {holding.place[:8]}{where}"
    return f"registry {holding.place}"


def to_claim(
    rows: Iterable[tuple[int, str, str]],
    places: Places,
    index: Mapping[str, Any],
    has_blob: Callable[[str], bool],
) -> list[int]:
    """The rows (id, ref, manifest digest) this store holds the bytes of and no holding
    says so: those its index (a parsed index.json) tags as the row's ref with the row's
    digest, and those no place holds whose manifest blob is in its layout."""
    tagged: dict[str, str] | None = None  # read when a row is not this store's already
    digests: set[str] = set()
    out = []
    for image_id, ref, digest in rows:
        if places.mine(image_id):
            continue
        if tagged is None:
            tagged = tags(index)
            digests = set(tagged.values())
        tagged_here = tagged.get(ref) == digest
        unclaimed = not places.held.get(image_id)
        if tagged_here or (unclaimed and (digest in digests or has_blob(digest))):
            out.append(image_id)
    return out


def places(
    workspace: Workspace,
    session: Session | None,
    lookup: Lookup,
    rows: Iterable[tuple[int, str, str]],
    index: Mapping[str, Any],
) -> Places:
    """Every image's holdings as ``lookup`` reads them, with what this store claims of
    ``rows`` (id, ref, manifest digest; :func:`to_claim`): the claims and the store's row
    (seen now) written in ``session``'s transaction, or, without one (a dry run), only
    counted."""
    me = holder(workspace)
    found = Places(me.store_id, holdings.all_holders(lookup))
    claims = to_claim(rows, found, index, workspace.layout.has_blob)
    if session is not None:
        me.register(session)
        holdings.hold_all(session, claims, me.store_id)
    found.claimed(claims)
    return found


def claim(workspace: Workspace) -> Places:
    """Claim, in a write transaction of its own, the rows this store holds the bytes of
    and no holding says so; what holds what after it."""
    from kiln.catalog.session import reader

    catalog = workspace.catalog
    index = workspace.layout.read_index()
    with catalog.session() as session:
        found = [(i.id, i.ref, i.digest) for i in catalog.all_images(session, pending=True)]
        return places(workspace, session, reader(session), found, index)


def per_store(
    decision: retention.Decision, held: Places, notes: list[str]
) -> tuple[retention.Decision, set[int]]:
    """Retention's decision as this store carries it out (kiln gc), and the versions whose
    rows go with it.

    A version that goes loses this store's copy; its row goes only when no other store
    holds it (a registry's copy keeps no row: a note says it stays). One held by other
    stores alone is kept here, for their gc to decide."""
    removed: list[retention.Version] = []
    gone: set[int] = set()
    kept = dict(decision.kept)
    for version in decision.removed:
        others = held.other_stores(version.id)
        if others and not held.mine(version.id):
            kept[version.id] = [f"held by {description(h)}" for h in others]
            continue
        removed.append(version)
        if others:
            by = ", ".join(description(h) for h in others)
            notes.append(f"{version.ref}: this store's copy goes; its row stays ({by} holds it)")
            continue
        gone.add(version.id)
        for copy in held.registries(version.id):
            notes.append(
                f"{version.ref}: its row goes; its copy at {copy.place} stays in the registry"
            )
    return replace(decision, kept=kept, removed=removed), gone
