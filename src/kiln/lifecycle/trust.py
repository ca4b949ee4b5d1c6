"""The trust policy where it is enforced: whether the policy in force requires signatures,
and whether an image meets it.

``kiln run`` and ``kiln start`` ask on the clock (time to healthy), so the question is
answered without the policy's models (pydantic) or pyca/cryptography: with no policy
file, it costs a few stats; with one, one read and a TOML parse. Only a policy that says
``require_signatures = true`` is loaded in full (validated, every problem at once) and
the image verified (kiln.lifecycle.signing), which hashes every layer blob.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.home import Home
from kiln.recipe.limits import read_regular

if TYPE_CHECKING:
    from kiln.lifecycle.policy import Policy
    from kiln.lifecycle.signing import Verified
    from kiln.store.layout import Layout

NAME = "kiln.toml"  # kiln.lifecycle.policy.NAME, which this module must not import
MAX_POLICY_BYTES = 1 << 20
SECTIONS = {"trust", "channels", "retention"}  # the policy's tables (PolicyModel)
TRUST_KEYS = {"keys", "require_signatures"}


def locate(home: Home) -> Path | None:
    """The policy file in force, in kiln.lifecycle.policy.find's order (KILN_POLICY,
    ./kiln.toml, $KILN_HOME/kiln.toml), or None; nothing is read."""
    env = os.environ.get("KILN_POLICY")
    if env:
        return Path(env)
    for candidate in (Path.cwd() / NAME, home.root / NAME):
        if candidate.is_file():
            return candidate
    return None


def requiring(home: Home) -> Path | None:
    """The policy file in force if it may require signatures, else None.

    A file that does not parse, has a table or a ``[trust]`` key the policy does not
    know, or whose ``require_signatures`` is not plainly false or absent, is returned
    too: loading it in full reports what is wrong (a typo never turns the check off)."""
    path = locate(home)
    if path is None:
        return None
    try:
        raw = tomllib.loads(read_regular(path, MAX_POLICY_BYTES, "policy file").decode())
    except (KilnError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        # unreadable or malformed: the full load says why, with file:line
        return path
    trust = raw.get("trust", {})
    if raw.keys() - SECTIONS or not isinstance(trust, dict) or trust.keys() - TRUST_KEYS:
        return path  # a misspelt key must not pass for "no signatures required"
    return None if trust.get("require_signatures", False) is False else path


@dataclass(frozen=True)
class Decision:
    """What the trust policy said about one image (None when no policy requires it)."""

    policy: Policy
    verified: Verified


def check(home: Home, layout: Layout, digest: str) -> Decision | None:
    """Verify ``digest`` against the policy in force if it requires signatures.

    None when no policy requires them; else the policy and the verification, which the
    caller refuses the image on unless ``verified.ok``."""
    path = requiring(home)
    if path is None:
        return None
    from kiln.lifecycle import policy as policies
    from kiln.lifecycle import signing

    policy = policies.load(path)
    if not policy.trust.require_signatures:
        return None
    return Decision(policy, signing.verify(layout, digest, policy.key_paths()))


def enforce(home: Home, layout: Layout, digest: str, ref: str) -> Decision | None:
    """Refuse (kiln.lifecycle.signing.Untrusted, exit 1) an image the policy in force does
    not trust: unsigned, signed only by keys it does not list, or with bytes that are not
    the signed ones. Returns the decision when a policy required signatures."""
    decision = check(home, layout, digest)
    if decision is None or decision.verified.ok:
        return decision
    from kiln.lifecycle.signing import Untrusted

    where = decision.policy.path
    problems = decision.verified.problems
    if any(problem.startswith("tampered") for problem in problems):
        hint = (
            "the store's copy of the image is not the signed one: 'kiln fsck' checks the "
            "store; rebake the image, or put its blobs back from a copy of the store"
        )
    else:
        hint = (
            f"sign it with 'kiln sign {ref} --key FILE', FILE the private half of a key "
            f"{where} lists under [trust] keys; 'kiln verify {ref}' runs the same checks"
        )
    raise Untrusted(
        f"{ref} ({digest}) is not trusted: the policy {where} requires signatures\n"
        + "\n".join(f"  {problem}" for problem in problems),
        hint=hint,
    )
