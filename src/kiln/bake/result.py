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

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

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
        }
