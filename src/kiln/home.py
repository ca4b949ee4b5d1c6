"""KILN_HOME: where the embedded store and catalog live, and the paths inside it."""

from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kiln.atomic import fsync_dir, make_dirs
from kiln.errors import StoreError

DEFAULT_HOME = Path("/var/lib/kiln")
HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("KILN_HOME", str(DEFAULT_HOME))).absolute())

    @property
    def id(self) -> str:
        """This home's short id: 8 hex of the sha256 of its resolved path. Names kiln gives
        things that are host-wide (cgroups, systemd-nspawn machine names) carry it, so two
        homes' machines of one name never share them (docs/machines.md)."""
        return hashlib.sha256(os.fsencode(self.root.resolve())).hexdigest()[:8]

    @property
    def store_id_file(self) -> Path:
        return self.root / "store.id"

    @cached_property
    def store_id(self) -> str:
        """This store's id in a catalog many stores share: 32 random hex digits, made once
        in ``store.id`` and never again (unlike :attr:`id`, two hosts' ``/var/lib/kiln``
        never share it). Two processes making it at once agree on one: each writes its own
        temp file, and the first to link it into place wins. A file that is not 32
        lowercase hex digits is refused, never replaced: rows of the catalog name it."""
        path = self.store_id_file
        try:
            return _read_store_id(path)
        except FileNotFoundError:
            pass
        make_dirs(self.root)
        tmp = self.root / f".store.id.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(os.urandom(16).hex() + "\n")
                handle.flush()
                os.fchmod(handle.fileno(), 0o644)
                os.fsync(handle.fileno())
            with suppress(FileExistsError):  # a rival's, or a damaged one: never replaced
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)
        return _read_store_id(path)

    @property
    def oci(self) -> Path:
        return self.root / "oci"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def debs(self) -> Path:
        return self.root / "cache" / "debs"

    @property
    def tmp(self) -> Path:
        """Scratch space on the store's file system, so finished work moves in by rename."""
        return self.root / "tmp"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def locks(self) -> Path:
        """Named lock files (kiln.locks): one per cache key being baked, and store.lock."""
        return self.root / "locks"

    @property
    def store_lock(self) -> Path:
        """Held shared by a bake from layer capture until its tag is written, and
        exclusively by ``kiln gc`` while it removes unreferenced blobs and layers."""
        return self.locks / "store.lock"

    @property
    def catalog_url(self) -> str:
        return os.environ.get("KILN_CATALOG_URL") or f"sqlite:///{self.root / 'catalog.db'}"

    def ensure(self) -> None:
        for path in (self.root, self.layers, self.debs, self.tmp, self.builds, self.locks):
            make_dirs(path)


def _read_store_id(path: Path) -> str:
    with path.open("rb") as handle:
        found = handle.read(65)  # an id and its newline, or enough to refuse what is not
    text = found.decode("ascii", "replace").strip()
    if len(text) != 32 or not HEX.issuperset(text) or len(found) > 64:
        raise StoreError(
            f"{path} does not hold a store id (32 lowercase hex digits): {found[:40]!r}",
            hint="the catalog names this store by it: restore the file from a backup, or, "
            "if this store is new and no catalog knows it yet, remove the file and kiln "
            "makes a new id",
        )
    return text
