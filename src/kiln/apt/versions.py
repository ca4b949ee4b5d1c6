"""Debian version order, as dpkg has it: epochs, upstream and revision, ``~`` before
anything (``1.0~rc1`` < ``1.0``), never string order.

python-debian compares (``debian.debian_support.version_compare``, dpkg's algorithm in
Python, a few microseconds a pair); a catalog of a thousand images with two hundred
packages each asks the same few thousand pairs over and over, so each answer is kept.
"""

from __future__ import annotations

from debian.debian_support import version_compare

MAX_MEMO = 1 << 18

_memo: dict[tuple[str, str], int] = {}


def compare(a: str, b: str) -> int:
    """<0, 0 or >0 as version ``a`` is older than, the same as, or newer than ``b``.

    A string that is not a Debian version compares by dpkg's rules all the same (as
    ``dpkg --compare-versions`` does with a warning); callers check versions where they
    read them (:func:`valid`)."""
    if a == b:
        return 0
    key = (a, b)
    found = _memo.get(key)
    if found is None:
        found = version_compare(a, b)
        found = (found > 0) - (found < 0)
        if len(_memo) >= MAX_MEMO:
            _memo.clear()
        _memo[key] = found
        _memo[(b, a)] = -found
    return found


def newer(a: str, b: str) -> bool:
    """``a`` is a newer version than ``b``."""
    return compare(a, b) > 0


def newest(versions: list[str]) -> str:
    best = versions[0]
    for version in versions[1:]:
        if compare(version, best) > 0:
            best = version
    return best


def valid(version: str) -> bool:
    """A version as Debian policy allows one: [epoch:]upstream[-revision], at most 128
    characters, starting with a digit after the epoch."""
    if not version or len(version) > 128:
        return False
    epoch, colon, rest = version.partition(":")
    if not colon:
        rest, epoch = version, "0"
    if not epoch.isdigit() or not rest or not rest[0].isdigit():
        return False
    allowed = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-~:")
    return set(rest) <= allowed
