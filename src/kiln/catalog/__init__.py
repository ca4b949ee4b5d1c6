"""The catalog: images, versions, lineage and packages, in SQLite or PostgreSQL."""

from kiln.catalog.db import Catalog
from kiln.catalog.machines import Machine, TestRun
from kiln.catalog.models import Artefact, Image, Package

__all__ = ["Artefact", "Catalog", "Image", "Machine", "Package", "TestRun"]
