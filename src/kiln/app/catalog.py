"""`kiln catalog status` and `kiln catalog upgrade`: the catalog's schema, on purpose.

Every other command upgrades an older catalog when it opens it (kiln.catalog.db); these
two open it as it is, to show or to upgrade under the catalog's own lock. On a shared
PostgreSQL catalog they also show and install the job queue's schema (kiln_jobs,
kiln.catalog.jobschema), after the catalog's own migrations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kiln.app.workspace import Workspace
from kiln.catalog import Catalog, jobschema
from kiln.catalog.migrate import Status, Upgraded, shown_url, status, upgrade
from kiln.catalog.revisions import FIRST

__all__ = ["FIRST", "CatalogStatus", "CatalogUpgrade", "catalog_status", "upgrade_catalog"]


@dataclass(frozen=True)
class CatalogStatus:
    schema: Status
    jobs: jobschema.JobSchema

    def to_json(self) -> dict[str, Any]:
        return {**self.schema.to_json(), "jobs": self.jobs.to_json()}


@dataclass(frozen=True)
class CatalogUpgrade:
    schema: Upgraded
    jobs: jobschema.JobSchema
    jobs_installed: bool  # this upgrade installed the job queue's schema

    @property
    def before(self) -> Status:
        return self.schema.before

    @property
    def after(self) -> str:
        return self.schema.after

    @property
    def applied(self) -> list[str]:
        return self.schema.applied

    def to_json(self) -> dict[str, Any]:
        jobs = {**self.jobs.to_json(), "installed_now": self.jobs_installed}
        return {**self.schema.to_json(), "jobs": jobs}


def _as_found(workspace: Workspace) -> Catalog:
    home = workspace.home
    if not os.environ.get("KILN_CATALOG_URL"):
        home.root.mkdir(parents=True, exist_ok=True)
    return Catalog(home.catalog_url, upgrade=False)


def catalog_status(workspace: Workspace) -> CatalogStatus:
    """The catalog's revision beside HEAD, and whether its job queue is installed;
    changes nothing, leaves no file behind."""
    home = workspace.home
    if not os.environ.get("KILN_CATALOG_URL") and not (home.root / "catalog.db").exists():
        return CatalogStatus(
            Status(shown_url(home.catalog_url), None, "empty"),
            jobschema.JobSchema(False, False, None),
        )
    catalog = _as_found(workspace)
    try:
        return CatalogStatus(status(catalog), jobschema.status(catalog.engine))
    finally:
        catalog.close()


def upgrade_catalog(workspace: Workspace) -> CatalogUpgrade:
    """Bring the catalog to HEAD, then install the job queue's schema on PostgreSQL
    (both idempotent)."""
    catalog = _as_found(workspace)
    try:
        done = upgrade(catalog)
        jobs, installed = jobschema.install(catalog.engine)
        return CatalogUpgrade(done, jobs, installed)
    finally:
        catalog.close()
