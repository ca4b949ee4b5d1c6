"""What a bake reports: the image it made or found, and where its time went."""

from __future__ import annotations

from dataclasses import dataclass, field

ONGOING = " ..."  # ends a log line that says a stage has begun (a spinner shows it)


@dataclass
class BakeResult:
    name: str
    version: int
    digest: str
    cache_key: str
    cached: bool
    seconds: float
    recipe: str
    stages: dict[str, float] = field(default_factory=dict)
    again_of: str = ""  # a new version with the bytes of this older one (kiln.bake.again)
    same_as: str = ""  # a rebuild (--no-cache) that made this newest version's bytes again

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def note(self) -> str:
        """What a person is told besides the ref: '' unless the bytes are an existing
        version's."""
        if self.again_of:
            return f"(the bytes of {self.again_of}, newest again)"
        if self.same_as:
            return f"(the same bytes as {self.same_as}: no new version)"
        return ""

    def to_json(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "cache_key": self.cache_key,
            "recipe": self.recipe,
            "stages": {k: round(v, 3) for k, v in self.stages.items()},
            "again_of": self.again_of or None,
            "same_as": self.same_as or None,
        }
