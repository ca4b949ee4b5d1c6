"""The catalog: images, versions, lineage and packages, in SQLite or PostgreSQL.

The names below load on first use: ``kiln.catalog.lookup`` answers the questions on the
clock (a cache hit, the image a machine boots) without importing SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.catalog.db import Catalog
    from kiln.catalog.machines import Machine, TestRun
    from kiln.catalog.models import Artefact, Image, Package

_WHERE = {
    "Catalog": "kiln.catalog.db",
    "Machine": "kiln.catalog.machines",
    "TestRun": "kiln.catalog.machines",
    "Artefact": "kiln.catalog.models",
    "Image": "kiln.catalog.models",
    "Package": "kiln.catalog.models",
}

__all__ = ["Artefact", "Catalog", "Image", "Machine", "Package", "TestRun"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.catalog' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
