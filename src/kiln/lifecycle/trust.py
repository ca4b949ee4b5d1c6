"""The trust policy where it is enforced: whether the policy in force requires signatures,
and whether an image meets it.

``kiln run`` and ``kiln start`` ask on the clock (time to healthy), so the question is
answered without the policy's models (pydantic): with no policy file it costs a few
stats; with one, one read and a TOML parse of its ``[trust]``. Only a policy that says
``require_signatures = true`` costs more: pyca/cryptography is imported and the image
verified (kiln.lifecycle.signing), which hashes every layer blob.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError
from kiln.home import Home
from kiln.lifecycle.policyfile import MAX_POLICY_BYTES, locate
from kiln.recipe.limits import read_regular

if TYPE_CHECKING:
    from kiln.lifecycle.signing import Verified
    from kiln.store.layout import Layout

# the policy's tables (PolicyModel)
SECTIONS = {
    "trust",
    "channels",
    "retention",
    "freshness",
    "network",
    "groups",
    "registry",
    "schedule",
}
TRUST_KEYS = {"keys", "require_signatures"}


@dataclass(frozen=True)
class Required:
    """A policy in force that requires signatures: its file and its trusted keys."""

    path: Path
    keys: tuple[Path, ...]  # PEM public key files, relative to the policy's folder


def requiring(home: Home) -> Required | None:
    """The policy in force if it requires signatures, else None.

    A plain ``[trust]`` (``require_signatures`` a boolean, ``keys`` a list of strings) is
    read here, without the policy's models; anything else (a file that does not parse, a
    table or ``[trust]`` key the policy does not know, a value of the wrong type) goes
    through kiln.lifecycle.policy.load, which reports what is wrong (a typo never turns
    the check off). The rest of the file is not validated on this path."""
    path = locate(home)
    if path is None:
        return None
    try:
        raw = tomllib.loads(read_regular(path, MAX_POLICY_BYTES, "policy file").decode())
    except (KilnError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return _loaded(path)  # the full load says why, with file:line
    trust = raw.get("trust", {})
    if raw.keys() - SECTIONS or not isinstance(trust, dict) or trust.keys() - TRUST_KEYS:
        return _loaded(path)
    required, keys = trust.get("require_signatures", False), trust.get("keys", [])
    if required is False:
        return None
    if (
        required is not True
        or not isinstance(keys, list)
        or not all(isinstance(key, str) and key and "\0" not in key for key in keys)
    ):
        return _loaded(path)
    folder = Path(os.path.realpath(path)).parent  # as policy.load resolves it
    return Required(path, tuple(folder / key for key in keys))


def _loaded(path: Path) -> Required | None:
    from kiln.lifecycle import policy as policies

    policy = policies.load(path)  # RecipeError (exit 2) lists every problem
    if not policy.trust.require_signatures:
        return None
    return Required(path, tuple(policy.key_paths()))


@dataclass(frozen=True)
class Decision:
    """What the trust policy said about one image (None when no policy requires it)."""

    policy: Required
    verified: Verified


def check(home: Home, layout: Layout, digest: str) -> Decision | None:
    """Verify ``digest`` against the policy in force if it requires signatures.

    None when no policy requires them; else the policy and the verification, which the
    caller refuses the image on unless ``verified.ok``."""
    required = requiring(home)
    if required is None:
        return None
    from kiln.lifecycle import signing

    return Decision(required, signing.verify(layout, digest, required.keys))


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
