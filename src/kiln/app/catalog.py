"""`kiln catalog status` and `kiln catalog upgrade`: the catalog's schema, on purpose.

Every other command upgrades an older catalog when it opens it (kiln.catalog.db); these
two open it as it is, to show or to upgrade under the catalog's own lock.
"""

from __future__ import annotations

import os

from kiln.app.workspace import Workspace
from kiln.catalog import Catalog
from kiln.catalog.migrate import Status, Upgraded, shown_url, status, upgrade
from kiln.catalog.revisions import FIRST

__all__ = ["FIRST", "catalog_status", "upgrade_catalog"]


def _as_found(workspace: Workspace) -> Catalog:
    home = workspace.home
    if not os.environ.get("KILN_CATALOG_URL"):
        home.root.mkdir(parents=True, exist_ok=True)
    return Catalog(home.catalog_url, upgrade=False)


def catalog_status(workspace: Workspace) -> Status:
    """The catalog's revision beside HEAD; changes nothing, leaves no file behind."""
    home = workspace.home
    if not os.environ.get("KILN_CATALOG_URL") and not (home.root / "catalog.db").exists():
        return Status(shown_url(home.catalog_url), None, "empty")
    catalog = _as_found(workspace)
    try:
        return status(catalog)
    finally:
        catalog.close()


def upgrade_catalog(workspace: Workspace) -> Upgraded:
    """Bring the catalog to HEAD."""
    catalog = _as_found(workspace)
    try:
        return upgrade(catalog)
    finally:
        catalog.close()
