"""apt sources lists: the host's (as mirror arguments for mmdebstrap) and any other's.

A sources file is one-line (``sources.list``, ``*.list``) or deb822 (``*.sources``);
:func:`parse` reads either into :class:`Source` values, whose ``line()`` is the one-line
form kiln hands a private apt (``signed-by`` and ``trusted=yes`` kept).

A deb822 ``Signed-By`` may hold the key itself, an ASCII-armoured public key block over
several lines (sources.list(5)); a one-line ``signed-by=`` names only files and
fingerprints, so :func:`keep_inline_key` writes such a key to a keyring file of its own
(``<sha256>.asc``: apt reads a keyring as armoured by that suffix, as binary otherwise)
and the line names that file.

mmdebstrap falls back to its own default mirror when given none; kiln instead uses the
host's sources (one-line .list files and deb822 .sources files), with the host's codename
swapped for the suite a recipe asks for. A mirror setting replaces them with one URL.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from kiln.atomic import write_atomic
from kiln.errors import BadInput
from kiln.rootpath import Root

ETC_APT = Path("/etc/apt")
APT_LISTS = Path("/var/lib/apt/lists")
KEY_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
KEY_END = "-----END PGP PUBLIC KEY BLOCK-----"
MAX_INLINE_KEY = 1 << 20


@dataclass(frozen=True)
class Source:
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None  # keyring paths or fingerprints, or an inline key block
    trusted: bool = False  # [trusted=yes]: apt takes the suite unsigned

    @property
    def inline_key(self) -> bool:
        """``signed_by`` is a key block itself (deb822), not where keys are."""
        return self.signed_by is not None and self.signed_by.lstrip().startswith("-----BEGIN")

    def line(self) -> str:
        """The one-line form; a source with an inline key has none until the key is kept
        as a file (:func:`keep_inline_key`)."""
        if self.inline_key:
            raise ValueError("an inline Signed-By key has no one-line form: keep it as a file")
        words = [f"signed-by={self.signed_by}"] if self.signed_by else []
        words += ["trusted=yes"] if self.trusted else []
        options = f"[{' '.join(words)}] " if words else ""
        return f"deb {options}{self.uri} {self.suite} {' '.join(self.components)}".rstrip()


def _one_line(text: str) -> list[Source]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options: dict[str, str] = {}
        match = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        rest = line[4:].strip()
        if match:
            for item in match.group(1).split():
                key, _, value = item.partition("=")
                options[key] = value
            rest = match.group(2)
        fields = rest.split()
        if len(fields) >= 2:
            out.append(
                Source(
                    fields[0],
                    fields[1],
                    tuple(fields[2:]),
                    options.get("signed-by"),
                    options.get("trusted") == "yes",
                )
            )
    return out


def _signed_by(lines: list[str]) -> str:
    """A Signed-By value: keyring paths and fingerprints on one line, or an armoured key
    block with its lines kept (a continuation line of one ``.`` is an empty line)."""
    words = [line.strip() for line in lines]
    if not any(word.startswith("-----BEGIN") for word in words):
        return " ".join(word for word in words if word)
    while words and not words[0]:
        words.pop(0)
    return "\n".join("" if word == "." else word for word in words) + "\n"


def _deb822(text: str) -> list[Source]:
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        values: dict[str, list[str]] = {}
        key = ""
        for line in paragraph.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                values[key].append(line)
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            values[key] = [value]
        fields = {
            name: _signed_by(lines)
            if name == "signed-by"
            else " ".join(part.strip() for part in lines if part.strip())
            for name, lines in values.items()
        }
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append(
                    Source(
                        uri,
                        suite,
                        tuple(fields.get("components", "main").split()),
                        fields.get("signed-by") or None,
                        fields.get("trusted", "").lower() == "yes",
                    )
                )
    return out


def keep_keyring(keyrings: Path, data: bytes) -> Path:
    """``data`` as a keyring file in ``keyrings``, named by its sha256 (mode 0644: apt
    reads keyrings as its own unprivileged user); ``.asc`` when armoured."""
    suffix = ".asc" if data.lstrip().startswith(b"-----BEGIN") else ".gpg"
    target = keyrings / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not target.is_file():
        write_atomic(target, data, mode=0o644)
    return target


def keep_inline_key(source: Source, keyrings: Path) -> Source | None:
    """``source`` with its inline key kept as a keyring file in ``keyrings`` and named by
    ``signed-by``; None when the block is not one armoured public key. Other sources are
    returned as they are."""
    if not source.inline_key:
        return source
    assert source.signed_by is not None
    block = source.signed_by.strip()
    lines = block.splitlines()
    if (
        len(block) > MAX_INLINE_KEY
        or lines[0] != KEY_BEGIN
        or lines[-1] != KEY_END
        or lines.count(KEY_BEGIN) != 1
    ):
        return None
    return replace(source, signed_by=str(keep_keyring(keyrings, (block + "\n").encode())))


def parse(name: str, text: str) -> list[Source]:
    """The ``deb`` sources of one file, by its name: one-line ``.list`` (and
    ``sources.list``) or deb822 ``.sources``; other names hold none (apt ignores them)."""
    if name.endswith(".sources"):
        return _deb822(text)
    if name.endswith(".list"):
        return _one_line(text)
    return []


def host_sources(etc_apt: Path = ETC_APT) -> list[Source]:
    sources: list[Source] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        sources += _one_line(main.read_text())
    folder = etc_apt / "sources.list.d"
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".list":
                sources += _one_line(path.read_text())
            elif path.suffix == ".sources":
                sources += _deb822(path.read_text())
    return sources


def host_codename(os_release: Path = Path("/etc/os-release")) -> str | None:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None


def os_codename(root: Path) -> str | None:
    """The Debian codename a root says it is (its os-release, read inside the root), if any."""
    with Root(root) as image:
        for name in ("etc/os-release", "usr/lib/os-release"):
            try:
                text = image.read_text(name, limit=1 << 16)
            except (FileNotFoundError, NotADirectoryError, BadInput):
                continue
            for line in text.splitlines():
                if line.startswith("VERSION_CODENAME="):
                    return line.split("=", 1)[1].strip().strip('"') or None
    return None


def _release_origin(source: Source, lists: Path) -> str | None:
    """The Origin field of the suite's Release file apt fetched, if apt has it."""
    mangled = re.sub(r"^[a-z+]+://", "", source.uri).rstrip("/").replace("/", "_")
    for name in ("InRelease", "Release"):
        path = lists / f"{mangled}_dists_{source.suite.replace('/', '_')}_{name}"
        try:
            with path.open(errors="replace") as handle:
                for line in handle:
                    if line.startswith("Origin:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return None


def is_debian(source: Source, lists: Path = APT_LISTS) -> bool:
    """Debian's own archive, not a third-party repository that targets Debian."""
    origin = _release_origin(source, lists)
    if origin is not None:
        return origin == "Debian"
    keyring_ok = source.signed_by is None or "debian-archive-keyring" in source.signed_by
    return keyring_ok and "debian" in source.uri


def mirror_lines(
    suite: str,
    mirror: str | None,
    components: tuple[str, ...] = ("main",),
    etc_apt: Path = ETC_APT,
    codename: str | None = None,
    lists: Path = APT_LISTS,
) -> list[str]:
    """The mirror arguments for a bootstrap of ``suite`` with the recipe's components.

    A mirror setting is a URL, or a whole sources.list line ("deb [trusted=yes] URL ./").
    """
    if mirror and mirror.startswith("deb "):
        return [mirror]
    if mirror:
        return [f"deb {mirror} {suite} {' '.join(components)}"]
    # an inline key has no file a bootstrap's apt could name: such a source is left out
    found = host_sources(etc_apt)
    debian = [s for s in found if not s.inline_key and is_debian(s, lists)]
    if not debian:
        inline = sum(1 for s in found if s.inline_key)
        why = f"; {inline} with an inline Signed-By key left out" if inline else ""
        raise BadInput(
            f"no Debian apt sources on this host (looked in {etc_apt}{why})",
            hint='set mirror = "http://..." in the recipe\'s bootstrap, or KILN_MIRROR'
            + (", or name the key by a keyring file (Signed-By: /path)" if inline else ""),
        )
    codename = codename or host_codename()
    lines = []
    for source in debian:
        wanted = source.suite
        if codename and source.suite.startswith(codename):
            wanted = suite + source.suite[len(codename) :]
        lines.append(Source(source.uri, wanted, components, source.signed_by).line())
    return list(dict.fromkeys(lines))
