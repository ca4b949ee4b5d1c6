"""What a promotion into a channel needs, as a registry: gate name -> check.

Each check looks at one candidate (an image, the channel it is to enter, that channel's
gates from the policy file) and answers ``(ok, why)``, or None when the channel's policy
does not ask for it. A later gate (freshness, a rebuild proof) is one function and one
entry in :data:`GATES`. A promotion that misses any gate is refused with every unmet one
listed; ``--force`` promotes anyway and records the results, except past the gates in
:data:`UNFORCEABLE` (a revoked image is never promoted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.catalog import evidence
from kiln.catalog.lookup import ImageRow, Lookup, iso
from kiln.home import Home
from kiln.lifecycle import channels, signing
from kiln.lifecycle.policy import Gates, Policy
from kiln.store.layout import Layout


@dataclass(frozen=True)
class Candidate:
    """An image on its way into ``channel``, and what the checks read."""

    image: ImageRow
    channel: str
    gates: Gates
    policy: Policy
    lookup: Lookup
    layout: Layout
    home: Home  # KILN_HOME, whose caches a check may read (never fetches into)
    now: datetime


@dataclass(frozen=True)
class Outcome:
    gate: str
    ok: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "ok": self.ok, "why": self.why}


Check = Callable[[Candidate], tuple[bool, str] | None]


def span(seconds: float) -> str:
    """A duration as the policy writes them, to the two largest units: 1d3h, 5m20s."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts[:2])


def _latest_run(candidate: Candidate, converge: bool) -> tuple[bool, str]:
    image = candidate.image
    runs = evidence.test_runs(candidate.lookup, image.digest)
    if converge:
        runs = [run for run in runs if run[1] is not None]
    what = "kiln test --converge" if converge else "kiln test"
    if not runs:
        return (
            False,
            f"no {what} of {image.ref} ({image.digest[:19]}) is recorded: {what} {image.ref}",
        )
    ok, converged, started, machine = runs[0]
    when = f"{iso(started)} in {machine}"
    if ok and (converged or not converge):
        return True, f"{what} passed at {when}"
    failed = "did not converge" if converge and ok is not None and not converged else "failed"
    return False, f"the latest {what} of {image.ref} ({when}) {failed}: {what} {image.ref} again"


def tests(candidate: Candidate) -> tuple[bool, str] | None:
    """The newest recorded ``kiln test`` of this exact digest passed."""
    return _latest_run(candidate, converge=False) if candidate.gates.tests else None


def converge(candidate: Candidate) -> tuple[bool, str] | None:
    """The newest ``kiln test --converge`` of this digest passed and changed nothing."""
    return _latest_run(candidate, converge=True) if candidate.gates.converge else None


def signed(candidate: Candidate) -> tuple[bool, str] | None:
    """A valid signature over this digest by a key the policy trusts, on the very bytes."""
    if not candidate.gates.signed:
        return None
    keys = candidate.policy.key_paths()
    verified = signing.verify(candidate.layout, candidate.image.digest, keys)
    if verified.ok:
        return True, "signed by " + ", ".join(key[:19] for key in verified.key_ids)
    return False, "; ".join(verified.problems) or "no valid signature by a trusted key"


def soak(candidate: Candidate) -> tuple[bool, str] | None:
    """It was in channel ``after`` first (the head, for at least ``soak``)."""
    gates, image = candidate.gates, candidate.image
    if gates.after is None:
        if gates.soak is None:
            return None
        return False, f"soak = {gates.soak!r} without after = CHANNEL: name the channel it soaks in"
    rows = candidate.lookup.assignments(image.name, gates.after)
    spans = channels.holds(rows, image.id, candidate.now)
    if not spans:
        return (
            False,
            f"{image.ref} has not been in {gates.after}: kiln promote {image.ref} {gates.after}",
        )
    longest = max((end - start).total_seconds() for start, end in spans)
    needed = gates.soak_seconds
    still = spans[-1][1] == candidate.now
    where = (
        f"in {gates.after} {'since ' + str(iso(spans[-1][0])) if still else 'for ' + span(longest)}"
    )
    if longest >= needed:
        return True, where + (f" (soak {gates.soak})" if gates.soak else "")
    if still:
        return False, (
            f"{image.ref} has been in {gates.after} for {span(longest)} of its {gates.soak} soak "
            f"(done in {span(needed - longest)})"
        )
    return False, (
        f"{image.ref} was in {gates.after} for {span(longest)} at most, short of its "
        f"{gates.soak} soak: kiln promote {image.ref} {gates.after} and let it soak"
    )


def not_revoked(candidate: Candidate) -> tuple[bool, str] | None:
    """Every promotion: neither the image nor an ancestor is revoked."""
    image = candidate.image
    found = candidate.lookup.revocations(image.id)
    due = [r for r in found if r.due(candidate.now)]
    if due:
        return False, due[0].describe(image.ref) + f": kiln restore {due[0].ref} first"
    if found:
        return True, f"not revoked yet: {found[0].ref} is to be from {iso(found[0].effective)}"
    return True, "not revoked"


def fresh(candidate: Candidate) -> tuple[bool, str] | None:
    """No security update for the image pending longer than ``max_security_age`` (the
    cached Packages indexes of its own apt sources; kiln.lifecycle.freshness)."""
    if candidate.gates.max_security_age is None:
        return None
    from kiln.lifecycle import freshness

    return freshness.security_gate(
        candidate.lookup,
        candidate.home,
        candidate.layout,
        candidate.image,
        candidate.gates.max_security_age,
        candidate.now,
    )


def proven(candidate: Candidate) -> tuple[bool, str] | None:
    """A passed ``kiln rebuild --prove`` of this exact digest, no older than
    ``proven_within`` (kiln.lifecycle.proofs)."""
    from kiln.lifecycle import proofs

    gates = candidate.gates
    return proofs.proven(candidate.lookup, candidate.image, gates.proven_within, candidate.now)


GATES: dict[str, Check] = {
    "revoked": not_revoked,
    "tests": tests,
    "converge": converge,
    "signed": signed,
    "soak": soak,
    "fresh": fresh,
    "proven": proven,
}
UNFORCEABLE = frozenset({"revoked"})


def evaluate(candidate: Candidate) -> list[Outcome]:
    """Every gate that applies, in registry order, each with its answer."""
    out = []
    for name, check in GATES.items():
        answer = check(candidate)
        if answer is not None:
            out.append(Outcome(name, *answer))
    return out
