"""What a promotion's gates and ``kiln where`` read of an image's record: its test runs and
its rebuild proofs, found by digest (a version numbered anew with the same bytes shares
them). Plain SQL through the lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln.catalog.lookup import Lookup

TEST_RUNS = """
SELECT t.ok, t.converge, t.started, t.machine FROM test_runs t
JOIN images i ON i.id = t.image_id
WHERE i.digest = :digest
ORDER BY t.started DESC, t.id DESC
"""
# The newest proof of every image: one row each, for kiln where over the whole catalog.
LATEST_PROOFS = (
    "SELECT p.image_id, p.ok, p.at, p.rebuilt FROM proofs p"
    " JOIN (SELECT image_id, MAX(id) AS newest FROM proofs GROUP BY image_id) n"
    " ON p.id = n.newest"
)
PROOF_OF_DIGEST = (
    "SELECT p.ok, p.at, p.rebuilt FROM proofs p WHERE p.digest = :digest"
    " ORDER BY p.at DESC, p.id DESC LIMIT 1"
)


def test_runs(lookup: Lookup, digest: str) -> Sequence[Sequence[Any]]:
    """Every ``kiln test`` of an image with ``digest``, newest first: (ok, converge,
    started, machine)."""
    return lookup.rows(TEST_RUNS, digest=digest)


def latest_proofs(lookup: Lookup) -> Sequence[Sequence[Any]]:
    """The newest rebuild proof of each image that has one: (image_id, ok, at, rebuilt)."""
    return lookup.rows(LATEST_PROOFS)


def newest_proof(lookup: Lookup, digest: str) -> Sequence[Any] | None:
    """The newest rebuild proof of ``digest``: (ok, at, rebuilt), or None."""
    found = lookup.rows(PROOF_OF_DIGEST, digest=digest)
    return found[0] if found else None
