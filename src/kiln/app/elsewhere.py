"""An image the catalog lists whose bytes this store does not have (a catalog shared by
many hosts): pulled first from a registry copy ``kiln push`` recorded, else from the team's
registry (``[registry] url`` of the policy file), with a line on stderr saying so. With
neither, the error says which stores hold it (exit 1).
"""

from __future__ import annotations

import sys

from kiln.app.workspace import Workspace
from kiln.catalog import holdings
from kiln.catalog.holdings import REGISTRY, STORE
from kiln.catalog.lookup import ImageRow
from kiln.errors import KilnError
from kiln.store import remote


def fetch(workspace: Workspace, row: ImageRow, required: bool = True) -> bool:
    """Bring ``row``'s bytes into this store; when nowhere has them, say where they are
    (``required``) or return False."""
    from kiln.app.pull import pull
    from kiln.lifecycle.policy import find

    held = holdings.holders(workspace.lookup, [row.id]).get(row.id, [])
    policy = find(workspace.home)
    sources: list[tuple[str, bool]] = []
    if policy.registry.url is not None:
        team = remote.registry_at(policy.registry.url, row.name).at(digest=row.digest)
        sources.append((str(team), policy.registry.insecure))
    copies = [h.place for h in held if h.kind == REGISTRY]
    sources += [(place, False) for place in copies if place not in dict(sources)]
    problems = []
    for source, insecure in sources:
        print(f"{row.ref}: its bytes are not in this store; pulling {source}", file=sys.stderr)
        try:
            pull(workspace, source, as_name=row.name, insecure=insecure)
            return True
        except KilnError as exc:
            problems.append(f"{source}: {exc.message}")
    if not required:
        for problem in problems:
            print(f"{row.ref}: not pulled: {problem}", file=sys.stderr)
        return False
    stores = [
        f"store {h.place[:12]} on {h.host or '?'} ({h.home or '?'})"
        for h in held
        if h.kind == STORE
    ]
    where = "; ".join(stores + copies) or "no store or registry the catalog knows of"
    raise KilnError(
        f"{row.ref} is in the catalog, but its bytes are not in this store: held by {where}"
        + "".join(f"\n  {p}" for p in problems),
        hint="push it from a store that holds it (kiln push), and name the team's registry in "
        "the policy file ([registry] url); or pull it here with kiln pull",
    )
