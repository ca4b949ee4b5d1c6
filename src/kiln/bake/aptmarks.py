"""apt's automatic marks (``/var/lib/apt/extended_states``), read as hostile text and
written back in one canonical order, so the same marks give the same bytes."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln import proc
from kiln.errors import BadInput, KilnError
from kiln.recipe.lockfile import ARCHITECTURE, PACKAGE_NAME, Deb
from kiln.rootpath import Root

EXTENDED_STATES = "/var/lib/apt/extended_states"
MAX_EXTENDED_STATES = 8 << 20  # ~100,000 marks; a real system has a few thousand
FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
KNOWN_FIELDS = ("Package", "Architecture", "Auto-Installed")


@dataclass
class Mark:
    """One stanza of apt's extended_states: a package (by name and architecture, as apt
    names it: an ``all`` package under the native architecture), whether apt installed it
    automatically, and any other fields in their order (kept, as apt keeps them)."""

    package: str
    architecture: str
    auto: bool
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.package, self.architecture)


def parse_extended_states(data: bytes, where: str, native: str) -> dict[tuple[str, str], Mark]:
    """apt's extended_states, read as the hostile text it may be (a step can write it):
    every stanza must name a valid package, architecture (apt's default: ``native``) and an
    Auto-Installed of 0 or 1; anything else is an error naming ``where`` and the line."""

    def bad(number: int, message: str) -> KilnError:
        return KilnError(
            f"{where}:{number}: {message}",
            hint="apt writes stanzas of 'Package:', 'Architecture:' and 'Auto-Installed:' "
            "lines; fix or remove the step that wrote this file (apt-mark changes it safely)",
        )

    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise bad(data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None
    marks: dict[tuple[str, str], Mark] = {}
    stanza: list[tuple[int, str, str]] = []

    def close(end: int) -> None:
        if not stanza:
            return
        fields = {name: value for _number, name, value in stanza}
        first = stanza[0][0]
        package = fields.get("Package")
        if package is None:
            raise bad(first, "a stanza without a Package field")
        if not PACKAGE_NAME.fullmatch(package):
            raise bad(first, f"{package!r} is not a Debian package name")
        architecture = fields.get("Architecture", native)
        if not ARCHITECTURE.fullmatch(architecture):
            raise bad(first, f"{package}: {architecture!r} is not a Debian architecture")
        auto = fields.get("Auto-Installed", "0")
        if auto not in ("0", "1"):
            raise bad(first, f"{package}: Auto-Installed is {auto!r}, not 0 or 1")
        extra = [(name, value) for _n, name, value in stanza if name not in KNOWN_FIELDS]
        mark = Mark(package, architecture, auto == "1", extra)
        if mark.key in marks:
            raise bad(first, f"{package} ({architecture}) has a second stanza")
        marks[mark.key] = mark
        stanza.clear()

    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            close(number)
            continue
        if "\0" in line or not line.isprintable():
            raise bad(number, "a line holds only printable text (no NUL or control bytes)")
        if line[0] in " \t":
            if not stanza:
                raise bad(number, "a continuation line outside a field")
            at, name, value = stanza[-1]
            if name in KNOWN_FIELDS:
                raise bad(number, f"{name} holds one line")
            stanza[-1] = (at, name, value + "\n" + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not FIELD.fullmatch(name):
            raise bad(number, f"expected 'Field: value', not {line[:60]!r}")
        if any(name == other for _n, other, _v in stanza):
            raise bad(number, f"{name} twice in one stanza")
        stanza.append((number, name, value.strip()))
    close(len(lines))
    return marks


def render_extended_states(marks: Iterable[Mark]) -> bytes:
    """The canonical file: stanzas sorted by (Package, Architecture) in apt's own layout;
    a package marked manual with nothing else to say has no stanza (apt drops those too)."""
    out = []
    for mark in sorted(marks, key=lambda m: m.key):
        if not mark.auto and not mark.extra:
            continue
        out.append(f"Package: {mark.package}\nArchitecture: {mark.architecture}\n")
        out.append(f"Auto-Installed: {1 if mark.auto else 0}\n")
        out.extend(f"{name}: {value}\n" for name, value in mark.extra)
        out.append("\n")
    return "".join(out).encode()


def native_architecture(debs: Iterable[Deb]) -> str:
    """The architecture apt files an ``all`` package under: dpkg's own, else the most
    common one, else the host's."""
    debs = list(debs)
    for deb in debs:
        if deb.name == "dpkg" and deb.architecture != "all":
            return deb.architecture
    counts = Counter(deb.architecture for deb in debs if deb.architecture != "all")
    if counts:
        return counts.most_common(1)[0][0]
    return proc.output(["dpkg", "--print-architecture"]).strip()


def apt_key(deb: Deb, native: str) -> tuple[str, str]:
    """Where apt keeps the mark of ``deb``."""
    return (deb.name, native if deb.architecture == "all" else deb.architecture)


def read_marks(image: Root, where: str, native: str) -> tuple[dict[tuple[str, str], Mark], bytes]:
    """The root's marks and the file's bytes (none when it has no file)."""
    try:
        data = image.read_bytes(EXTENDED_STATES, MAX_EXTENDED_STATES)
    except (FileNotFoundError, NotADirectoryError):
        return {}, b""
    except BadInput as exc:
        raise KilnError(
            f"{where}: {exc.message}", hint="a step made it too large or not a regular file"
        ) from None
    return parse_extended_states(data, where, native), data


def write_marks(image: Root, marks: Iterable[Mark], before: bytes) -> None:
    """Write the canonical file when it differs from what the root holds (so a child that
    changed no mark copies nothing up); no stanza at all means no file, as in a fresh root."""
    data = render_extended_states(marks)
    if not data:
        if image.exists(EXTENDED_STATES):
            image.remove(EXTENDED_STATES)
        return
    if data == before:
        return
    image.mkdirs(EXTENDED_STATES.rsplit("/", 1)[0])
    image.write_file(EXTENDED_STATES, data, 0o644)


def apply_lock_marks(
    marks: dict[tuple[str, str], Mark], wanted: Iterable[Deb], named: Iterable[str], native: str
) -> None:
    """:func:`mark_locked`'s decision, on the marks read from the root."""
    for deb in wanted:
        key = apt_key(deb, native)
        if deb.auto:
            marks.setdefault(key, Mark(key[0], key[1], True)).auto = True
        elif key in marks:
            marks[key].auto = False
    for name in named:
        package, _, qualifier = name.split("=", 1)[0].partition(":")
        key = (package, qualifier or native)
        if key in marks:
            marks[key].auto = False
