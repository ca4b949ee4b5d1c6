"""The forms kiln writes times in: each written once (kiln.times), and what records or
shows a time calls that one place."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from kiln import times
from kiln.apt import indexes
from kiln.catalog import lookup

SRC = Path(__file__).resolve().parents[2] / "src" / "kiln"
MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
EAST = timezone(timedelta(hours=5, minutes=30))


def test_the_three_forms() -> None:
    assert times.rfc3339(MOMENT) == "2026-01-02T03:04:05Z"
    assert times.second(MOMENT) == "2026-01-02T03:04:05"
    assert times.precise(MOMENT) == "2026-01-02T03:04:05.678901"
    assert times.precise(MOMENT.replace(microsecond=0)) == "2026-01-02T03:04:05"


def test_every_form_is_utc_whatever_the_offset_given() -> None:
    elsewhere = MOMENT.astimezone(EAST)
    assert elsewhere.hour == 8
    assert times.rfc3339(elsewhere) == "2026-01-02T03:04:05Z"
    assert times.second(elsewhere) == "2026-01-02T03:04:05"
    assert times.precise(elsewhere) == "2026-01-02T03:04:05.678901"


def test_a_time_without_an_offset_is_utc_already() -> None:
    naive = MOMENT.replace(tzinfo=None)
    assert times.utc(naive) == MOMENT
    assert times.second(naive) == "2026-01-02T03:04:05"
    assert times.precise(naive) == "2026-01-02T03:04:05.678901"


def test_precise_without_a_moment_is_now() -> None:
    before = datetime.now(UTC).replace(tzinfo=None)
    shown = datetime.fromisoformat(times.precise())
    assert before <= shown <= datetime.now(UTC).replace(tzinfo=None)


def test_the_catalog_shows_times_in_the_second_form() -> None:
    assert lookup.iso(None) is None and times.iso(None) is None
    for value in (MOMENT, MOMENT.astimezone(EAST), MOMENT.replace(tzinfo=None)):
        assert lookup.iso(value) == times.iso(value) == "2026-01-02T03:04:05"
    # SQLite hands a time back as text
    assert lookup.iso("2026-01-02 03:04:05.678901") == "2026-01-02T03:04:05"  # type: ignore[arg-type]
    assert lookup.moment("2026-01-02T08:34:05.678901+05:30") == MOMENT


def test_a_package_view_records_when_it_was_checked_in_the_second_form(tmp_path: Path) -> None:
    view = indexes.View(tmp_path, ("deb http://x y main",), MOMENT.astimezone(EAST), [], {}, {})
    assert view.describe()["checked"] == "2026-01-02T03:04:05"


def test_no_module_writes_a_time_form_of_its_own() -> None:
    # the formats themselves, and the second form's idiom, appear in kiln.times alone
    written = re.compile(r'strftime\("%Y-%m-%dT%H:%M:%SZ"\)|microsecond=0\)\.isoformat\(\)')
    found = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "times.py" or path.parent != SRC
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if written.search(line)
    ]
    assert found == []
