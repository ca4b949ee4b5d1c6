"""One duration grammar for recipes and policies, bounded so that what a duration becomes
(a timedelta, a deadline) always fits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kiln import durations
from kiln.errors import RecipeError
from kiln.lifecycle import policy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("1.5s", 1.5), ("15m", 900), ("24h", 86400), ("2w", 1209600)],
)
def test_the_grammar(text: str, seconds: float) -> None:
    assert durations.span(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1y", "-1s", "1 s", "1e3s", "s"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 500ms, 30s"):
        durations.span(text)


def test_a_bare_number_is_seconds_only_where_the_caller_says() -> None:
    assert durations.span("30", bare=True) == 30
    with pytest.raises(ValueError):
        durations.seconds("30")


@pytest.mark.parametrize("text", ["9999999999999w", "36501d", "9" * 400 + "s"])
def test_a_duration_is_at_most_a_hundred_years(text: str) -> None:
    with pytest.raises(ValueError, match="is longer than 100 years, the longest allowed"):
        durations.seconds(text)
    longest = durations.seconds("36500d")
    assert datetime.now(UTC) - timedelta(seconds=longest) < datetime.now(UTC)


def test_a_bound_of_the_callers_own() -> None:
    assert durations.span("1d", 86400) == 86400
    with pytest.raises(ValueError, match="longer than a day"):
        durations.span("25h", 86400)


def test_a_policy_duration_too_long_is_a_problem_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text('[retention]\nkeep_last = 3\nkeep_younger_than = "9999999999999w"\n')
    with pytest.raises(RecipeError) as caught:
        policy.load(path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (3, "retention.keep_younger_than")
    assert "longer than 100 years" in problem.message
    assert caught.value.exit_code == 2
