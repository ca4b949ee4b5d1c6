"""One Workspace per process: KILN_HOME's store and catalog, each opened once, on first use.

A command opens a workspace, hands it to its use cases and closes it when it ends, on
success or failure alike. The catalog's quick questions (``lookup``) go through the
standard library's sqlite3 on the embedded catalog, so a cache-hit bake or ``kiln run``
never imports SQLAlchemy; the ORM (``catalog``) loads when something is written or when
the catalog is PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from kiln.catalog.lookup import ImageRow, Lookup, open_sqlite, sqlite_path
from kiln.home import Home
from kiln.store.layout import Layout

if TYPE_CHECKING:
    from kiln.catalog import Catalog


class Workspace:
    def __init__(self, home: Home | None = None) -> None:
        self.home = home or Home.from_env()
        self._layout: Layout | None = None
        self._catalog: Catalog | None = None
        self._lookup: Lookup | None = None

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self.home.ensure()
            layout = Layout(self.home.oci, tmp=self.home.tmp)
            layout.init()
            self._layout = layout
        return self._layout

    @property
    def catalog(self) -> Catalog:
        """The catalog through SQLAlchemy, created or upgraded to HEAD when it is opened."""
        if self._catalog is None:
            from kiln.catalog import Catalog

            self.home.ensure()
            self._catalog = Catalog(self.home.catalog_url)
        return self._catalog

    @property
    def lookup(self) -> Lookup:
        """Read-only questions: plain sqlite3 when the embedded catalog is at HEAD."""
        if self._lookup is None:
            path = sqlite_path(self.home.catalog_url)
            fast = open_sqlite(path) if path is not None and self._catalog is None else None
            self._lookup = fast or self.catalog.lookup()
        return self._lookup

    def fetch_elsewhere(self, row: ImageRow) -> bool:
        """Pull ``row``'s bytes from where another store put them (kiln.app.elsewhere);
        False when no registry has them."""
        from kiln.app import elsewhere

        return elsewhere.fetch(self, row, required=False)

    def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


@contextmanager
def opened(home: Home | None = None) -> Iterator[Workspace]:
    workspace = Workspace(home)
    try:
        yield workspace
    finally:
        workspace.close()


P = ParamSpec("P")
R = TypeVar("R")


def with_workspace(
    use_case: Callable[Concatenate[Workspace, P], R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run one use case on a workspace of its own (the CLI's one command per process)."""
    with opened() as workspace:
        return use_case(workspace, *args, **kwargs)
