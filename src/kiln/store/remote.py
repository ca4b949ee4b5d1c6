"""Where an image goes to or comes from: ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` (a
registry, over TLS unless told otherwise) or ``oci:DIR[:TAG]`` (an OCI image layout folder).

The grammar is the one skopeo and the OCI distribution spec use, checked before anything
is sent: a repository is lowercase path components, a tag at most 128 characters of
``[A-Za-z0-9_.-]`` not starting with ``.`` or ``-``, a digest ``sha256:`` and 64 hex.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import BadInput

COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{COMPONENT}(?:/{COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
OCI_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}$")  # a ref name in a layout
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+(?::[0-9]{1,5})?$")
IPV6_HOST_RE = re.compile(r"^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
FORMS = "docker://HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG]"


@dataclass(frozen=True)
class Registry:
    """An image in a registry: ``host`` with its port, the repository, a tag or a digest."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"docker://{self.place}"

    @property
    def place(self) -> str:
        """HOST/REPO[:TAG|@DIGEST], the form skopeo takes after docker://."""
        at = f"@{self.digest}" if self.digest else (f":{self.tag}" if self.tag else "")
        return f"{self.host}/{self.repository}{at}"

    def at(self, *, tag: str | None = None, digest: str | None = None) -> Registry:
        """The same repository at another tag or digest."""
        return Registry(self.host, self.repository, tag, digest)

    def sibling(self, name: str) -> Registry:
        """Repository ``name`` beside this one (``team/web`` -> ``team/base``): where an
        image's parent goes."""
        prefix, _, _ = self.repository.rpartition("/")
        return Registry(self.host, f"{prefix}/{name}" if prefix else name)

    @property
    def loopback(self) -> bool:
        if self.host.startswith("["):  # [v6 address]:port
            name = self.host[1 : self.host.index("]")]
        else:
            name = self.host.rsplit(":", 1)[0]
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Folder:
    """An image in an OCI layout folder, under a tag (its ref name) or none."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


Location = Registry | Folder


def parse(text: str, what: str = "location") -> Location:
    """A location as given on the command line; BadInput (exit 2) saying what is wrong."""
    if "\0" in text:
        raise _bad(text, what, "it holds a NUL character")
    if text.startswith("docker://"):
        return _registry(text, what)
    if text.startswith("oci:"):
        return _folder(text, what)
    raise _bad(text, what, "it starts with docker:// or oci:")


def registry_at(url: str, name: str) -> Registry:
    """Image ``name`` under a registry prefix (``[registry] url`` of the policy file)."""
    prefix = url.removeprefix("docker://").rstrip("/")
    parsed = _registry(f"docker://{prefix}/{name}", "registry url")
    return parsed


def _registry(text: str, what: str) -> Registry:
    rest = text.removeprefix("docker://")
    host, slash, path = rest.partition("/")
    if not slash or not path:
        raise _bad(text, what, "it names a repository after the host (docker://HOST/REPO)")
    if not (HOST_RE.match(host) or IPV6_HOST_RE.match(host)):
        raise _bad(text, what, f"'{host}' is not a registry host (HOST or HOST:PORT)")
    tag = digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not DIGEST_RE.match(digest):
            raise _bad(text, what, f"'{digest}' is not a digest (sha256: and 64 hex)")
    elif ":" in path.rsplit("/", 1)[-1]:
        path, _, tag = path.rpartition(":")
        if not TAG_RE.match(tag):
            raise _bad(text, what, f"'{tag}' is not a tag ([A-Za-z0-9_.-], at most 128)")
    if not REPOSITORY_RE.match(path) or len(path) > 255:
        raise _bad(
            text, what, f"'{path}' is not a repository (lowercase a-z 0-9 . _ - and / between)"
        )
    return Registry(host, path, tag, digest)


def _folder(text: str, what: str) -> Folder:
    # as skopeo reads it: the folder ends at the first ':' (so it holds none)
    path, colon, tag = text.removeprefix("oci:").partition(":")
    if not path:
        raise _bad(text, what, "it names a folder after oci:")
    if colon and not OCI_REF_RE.match(tag):
        raise _bad(text, what, f"'{tag}' is not a ref name ([A-Za-z0-9._:-], at most 128)")
    return Folder(Path(path).absolute(), tag or None)


def _bad(text: str, what: str, why: str) -> BadInput:
    return BadInput(f"{text!r} is not a {what}: {why}", hint=f"give {FORMS}")
