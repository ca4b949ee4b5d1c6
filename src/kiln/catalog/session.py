"""A write transaction as the rest of kiln holds it: the ``Session`` that
``Catalog.session()`` hands out (passed on to catalog/ functions, never queried outside
catalog/), and the lookup's questions asked over that transaction's own connection, so a
command that is about to add a row reads what it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session as Session

from kiln.catalog.lookup import Lookup


def reader(session: Session) -> Lookup:
    """The lookup's questions, asked inside ``session``'s transaction."""

    def query(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        session.flush()  # rows this transaction added are part of the answer
        return [tuple(row) for row in session.execute(text(sql), params)]

    return Lookup(query)
