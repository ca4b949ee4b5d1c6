"""Fixtures of the fast tier: plain folders on tmp_path, no root needed beyond that."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.home import Home
from kiln.store.layout import Layout


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """An empty KILN_HOME with its folders and an initialised OCI layout."""
    home = Home(tmp_path / "home")
    home.ensure()
    Layout(home.oci).init()
    return home


def layout_of(home: Home) -> Layout:
    return Layout(home.oci)
