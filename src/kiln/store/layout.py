"""One OCI image layout (image-spec v1.1): blobs by sha256, index.json naming manifests.

Blobs are written before anything refers to them; index.json is replaced atomically under
a lock, so readers always see a complete index. Refs are ``name:version`` strings kept in
the ``org.opencontainers.image.ref.name`` annotation, which is how skopeo's
``oci:DIR:name:version`` and umoci find an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kiln import locks
from kiln.atomic import fsync_dir, write_atomic
from kiln.digests import canonical_json, file_sha256
from kiln.errors import NotFound, StoreError

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: digest == diff_id
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"  # what kiln captures
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20
SIGNATURE_TAG_RE = re.compile(r"^sha256-[0-9a-f]{64}\.sig$")
FSCK_HINT = (
    "run 'kiln fsck' to check the whole store; then rebake the image, "
    "or put the blob back from a copy of the store"
)


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of manifest ``digest``: ``sha256-<hex>.sig``."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest}.sig"


def image_ref(entry: dict[str, Any]) -> str | None:
    """The image ref (name:version) an index.json entry tags; None for an artefact and for
    a signature tag, which name no image of their own."""
    ref = (entry.get("annotations") or {}).get(REF_ANNOTATION)
    return None if ref is None or SIGNATURE_TAG_RE.match(ref) else str(ref)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(
            data["mediaType"],
            data["digest"],
            int(data["size"]),
            tuple(sorted((data.get("annotations") or {}).items())),
        )

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


class BlobWriter:
    """Write a blob in chunks while hashing it; ``commit`` moves it in under its digest.

    The temp file is owned (kiln.locks): its flock is held until the rename, so a partial
    blob left by a killed process is told from one being written by the kernel.
    """

    def __init__(self, layout: Layout, tmp_dir: Path) -> None:
        self._layout = layout
        self._path, fd, self._held = locks.owned_file(tmp_dir, "blob-")
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        """The sha256 of what was written so far."""
        return self._hash.hexdigest()

    def commit(self, media_type: str) -> Descriptor:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except BaseException:
            self.abort()  # a full disk shows here: nothing half-written stays behind
            raise
        digest = "sha256:" + self._hash.hexdigest()
        target = self._layout.blob_path(digest)
        try:
            if target.exists() and file_sha256(target) == digest.split(":", 1)[1]:
                self._path.unlink()  # stored already
            else:  # new, or a corrupt copy that the same bytes now repair
                os.chmod(self._path, 0o644)
                os.replace(self._path, target)
                fsync_dir(target.parent)
        finally:
            self._held.release()
        return Descriptor(media_type, digest, self.size)

    def abort(self) -> None:
        """Remove the temp file, even when closing it fails again (a full disk)."""
        try:
            if not self._file.closed:
                self._file.close()
        except OSError:
            pass  # the buffered bytes had nowhere to go; the file goes anyway
        finally:
            self._path.unlink(missing_ok=True)
            self._held.release()


class Layout:
    def __init__(self, root: Path, tmp: Path | None = None) -> None:
        """``tmp``: where temp files are made before they are renamed in (same file system;
        KILN_HOME's ``tmp/`` beside ``oci/`` by default)."""
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = tmp or root.parent / "tmp"

    def _write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data, tmp_dir=self.tmp)

    def init(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            self._write(self.root / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        if not (self.root / "index.json").exists():
            with self._locked():
                if not (self.root / "index.json").exists():
                    self._write(self.root / "index.json", canonical_json(self._empty_index()))

    @staticmethod
    def _empty_index() -> dict[str, Any]:
        return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}

    def blob_path(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64:
            raise StoreError(f"unsupported digest {digest!r}")
        return self.blobs / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.blob_path(digest)
        if not target.exists():
            self._write(target, data)
        return Descriptor(media_type, digest, len(data))

    def put_json(self, value: Any, media_type: str) -> Descriptor:
        return self.put_bytes(canonical_json(value), media_type)

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"blob {digest} is missing from {self.blobs}",
                hint="run 'kiln fsck' to check the store",
            ) from None

    def verify_blob(self, digest: str, what: str) -> None:
        """Check a stored blob against its digest; a StoreError names it if it is wrong."""
        try:
            actual = file_sha256(self.blob_path(digest))
        except FileNotFoundError:
            raise StoreError(
                f"{what}: blob {digest} is missing from {self.blobs}", hint=FSCK_HINT
            ) from None
        if actual != digest.split(":", 1)[1]:
            raise StoreError(
                f"{what}: blob {digest} in {self.blobs} is corrupt (its content hashes to "
                f"sha256:{actual})",
                hint=FSCK_HINT,
            )

    def read_json(self, digest: str) -> Any:
        return json.loads(self.read_bytes(digest))

    def writer(self, tmp_dir: Path) -> BlobWriter:
        return BlobWriter(self, tmp_dir)

    def copy_blob_to(self, digest: str, dest: BinaryIO) -> None:
        with self.blob_path(digest).open("rb") as src:
            shutil.copyfileobj(src, dest, CHUNK)

    # index.json
    def read_index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "index.json").read_bytes())
        except FileNotFoundError:
            return self._empty_index()
        return data

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".index.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def tag(self, ref: str, manifest: Descriptor, referrers: Sequence[Descriptor] = ()) -> None:
        """Point ``ref`` (name:version) at a stored manifest, and list its referrers.

        One atomic index.json write: readers see the image with its artefacts or neither.
        """
        for descriptor in (manifest, *referrers):
            if not self.has_blob(descriptor.digest):
                raise StoreError(f"refusing to tag {ref}: {descriptor.digest} is not stored")
        with self._locked():
            index = self.read_index()
            manifests = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(REF_ANNOTATION) != ref
            ]
            entry = manifest.to_json()
            entry["annotations"] = {REF_ANNOTATION: ref}
            manifests.append(entry)
            known = {m["digest"] for m in manifests}
            manifests += [r.to_json() for r in referrers if r.digest not in known]
            index["manifests"] = manifests
            self._write(self.root / "index.json", canonical_json(index))

    def retag(
        self,
        ref: str,
        amend: Callable[[Descriptor | None], Descriptor],
        annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """Point ``ref`` at ``amend(what it names now)``, under the index lock: two writers
        of one tag (two signers of an image) each build on the other's manifest.

        ``amend`` stores the new manifest's blobs and returns its descriptor.
        """
        with self._locked():
            index = self.read_index()
            current = next(
                (
                    Descriptor.from_json(m)
                    for m in index["manifests"]
                    if (m.get("annotations") or {}).get(REF_ANNOTATION) == ref
                ),
                None,
            )
            manifest = amend(current)
            if not self.has_blob(manifest.digest):
                raise StoreError(f"refusing to tag {ref}: {manifest.digest} is not stored")
            entry = manifest.to_json()
            entry["annotations"] = {**(annotations or {}), REF_ANNOTATION: ref}
            index["manifests"] = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(REF_ANNOTATION) != ref
            ] + [entry]
            self._write(self.root / "index.json", canonical_json(index))
        return manifest

    def untag(
        self, ref: str, referrers: Sequence[Descriptor] = (), digest: str | None = None
    ) -> None:
        """Drop ``ref`` (only while it still names ``digest``, when given) and ``referrers``."""
        drop = {r.digest for r in referrers}
        with self._locked():
            index = self.read_index()
            index["manifests"] = [
                m
                for m in index["manifests"]
                if not (
                    (m.get("annotations") or {}).get(REF_ANNOTATION) == ref
                    and (digest is None or m["digest"] == digest)
                )
                and m["digest"] not in drop
            ]
            self._write(self.root / "index.json", canonical_json(index))

    def prune(self, drop: Callable[[dict[str, Any]], bool]) -> None:
        """Remove the index.json entries ``drop`` picks, in one atomic write."""
        with self._locked():
            index = self.read_index()
            index["manifests"] = [m for m in index["manifests"] if not drop(m)]
            self._write(self.root / "index.json", canonical_json(index))

    def tagged(self, ref: str) -> Descriptor | None:
        """What ``ref`` names (an image or a signature tag), or None."""
        for entry in self.read_index()["manifests"]:
            if (entry.get("annotations") or {}).get(REF_ANNOTATION) == ref:
                return Descriptor.from_json(entry)
        return None

    def refs(self) -> dict[str, Descriptor]:
        """The images index.json tags, by name:version (signature tags are not images)."""
        out = {}
        for entry in self.read_index()["manifests"]:
            ref = image_ref(entry)
            if ref:
                out[ref] = Descriptor.from_json(entry)
        return out

    def resolve(self, ref: str) -> Descriptor:
        try:
            return self.refs()[ref]
        except KeyError:
            raise NotFound(f"no image {ref} in {self.root}") from None
