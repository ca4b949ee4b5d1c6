"""`kiln drift`: what machines changed against their images (kiln.machines.drift).

The answer comes from each machine's folder and the store's bytes; the catalog is not
asked, so the check costs what reading the machines' own writes costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.app.workspace import Workspace
from kiln.errors import KilnError
from kiln.machines import drift as machine_drift
from kiln.machines.drift import Drift
from kiln.machines.folder import Folder, machines_dir

__all__ = ["Drift", "Unreadable", "drift", "drift_all"]


def drift(workspace: Workspace, name: str, deep: bool = False) -> Drift:
    return machine_drift.scan(workspace.home, name, deep)


@dataclass(frozen=True)
class Unreadable:
    """A machine whose drift could not be read; ``kiln drift --all`` goes on without it."""

    name: str
    error: str
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "error": self.error, "hint": self.hint}


def drift_all(workspace: Workspace, deep: bool = False) -> list[Drift | Unreadable]:
    """Every machine in KILN_HOME's machines/ folder, by name; one that cannot be read (a
    launch half done, a damaged state file, its layers gone) is named with the reason."""
    folder = machines_dir(workspace.home)
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    out: list[Drift | Unreadable] = []
    for name in names:
        if not Folder(folder / name).exists():
            continue  # volumes kept by kiln rm
        try:
            out.append(machine_drift.scan(workspace.home, name, deep))
        except KilnError as exc:
            out.append(Unreadable(name, exc.message, exc.hint))
    return out
