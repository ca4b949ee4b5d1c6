"""The image-ref grammar at its edges: versions fit the catalog's 64-bit integers and have
one spelling, names and channels are bounded, and every refusal says why."""

from __future__ import annotations

import pytest

from kiln import refs
from kiln.errors import BadInput


def test_the_largest_version_parses_and_one_more_is_bad_input() -> None:
    assert refs.parse(f"tiny:{refs.MAX_VERSION}").version == 2**63 - 1
    for text in ("tiny:9223372036854775808", "tiny:99999999999999999999999"):
        with pytest.raises(BadInput) as caught:
            refs.parse(text)
        assert caught.value.exit_code == 2
        assert "a version is a whole number from 1 to 9223372036854775807" in caught.value.message
        assert not refs.is_ref(text)


@pytest.mark.parametrize("text", ["tiny:01", "tiny:007", "tiny:0"])
def test_a_version_has_one_spelling(text: str) -> None:
    with pytest.raises(BadInput, match="without leading zeros"):
        refs.parse(text)


def test_names_and_channels_are_at_most_63_characters() -> None:
    assert refs.parse("n" * 63).name == "n" * 63
    assert refs.parse("tiny:" + "c" * 63).channel == "c" * 63
    assert refs.is_channel("c" * 63) and not refs.is_channel("c" * 64)
    with pytest.raises(BadInput, match="a name is at most 63 characters"):
        refs.parse("n" * 64)
    with pytest.raises(BadInput, match="a channel name is at most 63 characters"):
        refs.parse("tiny:" + "c" * 64)
    with pytest.raises(BadInput, match=r"\(5005 characters\)"):
        refs.parse("tiny:" + "c" * 5000)


def test_a_channel_or_name_error_says_lower_case() -> None:
    with pytest.raises(BadInput) as caught:
        refs.parse("tiny:Prod")
    assert "a channel (lower-case letters, digits, '-' and '_'" in caught.value.message
    with pytest.raises(BadInput, match="a name is lower-case letters"):
        refs.parse("Tiny:1")
    assert "lower-case" in refs.CHANNEL_RULE and "starting with a letter" in refs.CHANNEL_RULE


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            "PROD",
            "a channel name is lower-case letters, digits, '-' and '_', starting with a letter",
        ),
        ("3", "(a number is a version)"),
        ("latest", "latest always means the newest version"),
        ("c" * 5000, "a channel name is at most 63 characters, not 5000"),
    ],
)
def test_why_a_channel_name_is_refused(text: str, why: str) -> None:
    found = refs.channel_problem(text)
    assert found is not None and why in found and len(found) < 200
    assert not refs.is_channel(text)
    assert refs.channel_problem("prod-2_b") is None


def test_a_hostile_long_channel_name_is_not_echoed_whole() -> None:
    from kiln.lifecycle.channels import check_name

    with pytest.raises(BadInput) as caught:
        check_name("c" * 5000)
    assert "(5000 characters)" in caught.value.message
    assert len(caught.value.message) < 300
