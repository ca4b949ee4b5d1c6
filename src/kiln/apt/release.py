"""A suite's Release file (or InRelease, its signed form): who it is and whether it is a
security suite.

Packages indexes carry no dates and no security flag; the Release file of the suite an
index belongs to says where it comes from. A suite is a security suite when its Release
says ``Label: Debian-Security`` (Debian's security archive) or its Suite or Codename ends
in ``-security`` (``bookworm-security``, and mirrors or local repositories named alike).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from kiln.errors import BadInput

MAX_RELEASE = 8 << 20  # Debian's own InRelease is about 150 KiB
FIELD_LIMIT = 256
SECURITY_LABEL = "Debian-Security"
SECURITY_SUFFIX = "-security"


@dataclass(frozen=True)
class Release:
    origin: str = ""
    label: str = ""
    suite: str = ""
    codename: str = ""

    @functools.cached_property
    def security(self) -> bool:
        return self.label == SECURITY_LABEL or any(
            name.endswith(SECURITY_SUFFIX) for name in (self.suite, self.codename)
        )

    @property
    def name(self) -> str:
        """The suite as a sources line names it most often: the codename, else the suite."""
        return self.codename or self.suite

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "label": self.label,
            "suite": self.suite,
            "codename": self.codename,
            "security": self.security,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        return cls(
            str(data.get("origin", "")),
            str(data.get("label", "")),
            str(data.get("suite", "")),
            str(data.get("codename", "")),
        )


def parse(data: bytes, where: str = "Release") -> Release:
    """The fields of a Release or InRelease file (its PGP armour is skipped), bounded."""
    from debian import deb822

    if len(data) > MAX_RELEASE:
        raise BadInput(f"{where} is larger than {MAX_RELEASE} bytes: not a Release file")
    found = deb822.Release(data.decode("utf-8", errors="replace").splitlines())

    def field(key: str) -> str:
        value = str(found.get(key, "")).strip()
        return value[:FIELD_LIMIT] if value and "\n" not in value else ""

    return Release(field("Origin"), field("Label"), field("Suite"), field("Codename"))
