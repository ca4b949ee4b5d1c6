"""Map TOML key paths to line numbers, so errors can say file:line.

tomllib gives values but no positions. This scanner reads the text once and records the
line of every table header and ``key =`` line under its full key path, counting
``[[array]]`` tables so that ``steps[2].copy`` finds the third ``[[steps]]`` table's
``copy`` line. A path without its own line falls back to its nearest ancestor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_KEY})\s*=")


def _split_key(key: str) -> list[str]:
    parts = re.findall(rf"{_BARE}|{_QUOTED}", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


class LineIndex:
    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        counts: dict[tuple[str, ...], int] = {}
        table: KeyPath = ()
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                names = tuple(_split_key(header.group(2)))
                # [steps.env] after the third [[steps]] belongs to steps[2]
                prefix: list[str | int] = []
                for depth, name in enumerate(names[:-1], start=1):
                    prefix.append(name)
                    if names[:depth] in counts:
                        prefix.append(counts[names[:depth]] - 1)
                if header.group(1) == "[[":
                    index = counts.get(names, 0)
                    counts[names] = index + 1
                    table = (*prefix, names[-1], index)
                else:
                    table = (*prefix, names[-1])
                self.lines.setdefault(table, number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                self.lines.setdefault((*table, *_split_key(assign.group(1))), number)
                rest = line[assign.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def line_of(self, path: Sequence[str | int]) -> int | None:
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None


def format_path(path: Sequence[str | int]) -> str:
    """('steps', 2, 'copy') -> 'steps[2].copy'"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out
