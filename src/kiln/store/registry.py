"""The OCI distribution API calls kiln makes itself (skopeo moves images; this moves what
hangs off them): manifests and blobs by digest, the referrers API and its tag fallback.

Credentials come from the containers auth file (``REGISTRY_AUTH_FILE``, else
``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``), the
file skopeo reads too; never from a command-line value. Basic credentials are sent as the
registry asks: directly, or to its token service for a bearer token. TLS is verified,
with a registry's own CA from ``/etc/containers/certs.d/HOST[:PORT]/*.crt`` when there is
one; plain HTTP only for a loopback registry, when asked.

Everything a registry sends is hostile: a manifest is at most 4 MiB and must hash to the
digest asked for; a blob is streamed into the store's blob writer, which hashes it, and
refused when it is longer than its descriptor says or hashes to anything else.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kiln.digests import digest_of
from kiln.errors import BadInput, KilnError, NotFound
from kiln.store.layout import Descriptor, Layout
from kiln.store.remote import Registry

if TYPE_CHECKING:  # requests loads with the first Client: a push starts skopeo first
    import requests

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join(
    [
        MEDIA_MANIFEST,
        MEDIA_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
MAX_MANIFEST = 4 << 20  # the distribution spec's limit a registry must accept
CHUNK = 1 << 20
TIMEOUT = 60.0
CERTS = Path("/etc/containers/certs.d")
PARALLEL = 8  # API calls in flight at once, as skopeo's own copies
T = TypeVar("T")
AUTH_HINT = (
    "log in with 'skopeo login HOST' (or podman login), which writes the containers auth "
    "file kiln reads: REGISTRY_AUTH_FILE, else ~/.config/containers/auth.json"
)


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``sha256-<hex>``."""
    return digest.replace(":", "-", 1)


def auth_file() -> Path | None:
    """The containers auth file in force, or None when there is none."""
    given = os.environ.get("REGISTRY_AUTH_FILE")
    if given:
        return Path(given)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [Path(runtime) / "containers" / "auth.json"] if runtime else []
    candidates.append(Path.home() / ".config" / "containers" / "auth.json")
    return next((path for path in candidates if path.is_file()), None)


def _credentials(host: str) -> tuple[str, str] | None:
    path = auth_file()
    if path is None:
        return None
    try:
        data = json.loads(path.read_bytes())
        entry = data.get("auths", {}).get(host) or data.get("auths", {}).get(f"https://{host}")
        if not entry:
            return None
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(
            f"cannot read the credentials for {host} in the containers auth file {path}: {exc}",
            hint=AUTH_HINT,
        ) from None
    return user, password


def _ca_bundle(host: str) -> str | bool:
    """A CA file for ``host`` under certs.d, else True (the system's trust store)."""
    folder = CERTS / host
    found = sorted(folder.glob("*.crt")) if folder.is_dir() else []
    return str(found[0]) if found else True


def parallel(work: Callable[[T], object], items: Iterable[T]) -> None:
    """``work`` on every item, :data:`PARALLEL` at a time; the first failure is raised."""
    listed = list(items)
    if len(listed) <= 1:
        for item in listed:
            work(item)
        return
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for future in [pool.submit(work, item) for item in listed]:
            future.result()


@dataclass
class Client:
    """One registry host's API, with its credentials and a kept-alive connection per
    thread (a requests Session is not shared between threads)."""

    registry: Registry
    insecure: bool = False
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _sessions: list[requests.Session] = field(default_factory=list, repr=False)
    _token: str | None = None
    _there: set[tuple[str, str]] = field(default_factory=set, repr=False)  # (repo, digest)

    def __post_init__(self) -> None:
        if self.insecure and not self.registry.loopback:
            raise BadInput(
                f"--insecure talks plain HTTP, which kiln allows only to a loopback registry, "
                f"not {self.registry.host}",
                hint=f"give {self.registry.host} a TLS certificate (its CA in "
                f"{CERTS}/{self.registry.host}/ca.crt)",
            )
        self._scheme = "http" if self.insecure else "https"
        self._verify = _ca_bundle(self.registry.host)
        self._basic = _credentials(self.registry.host)
        self._lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.verify = self._verify
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def _url(self, path: str) -> str:
        return f"{self._scheme}://{self.registry.host}/v2/{path}"

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        import requests

        headers = dict(kwargs.pop("headers", {}))
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        elif self._basic:
            token = base64.b64encode(":".join(self._basic).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            # verify on each call: requests lets REQUESTS_CA_BUNDLE win over a session's own
            return self._session.request(
                method, url, headers=headers, timeout=TIMEOUT, verify=self._verify, **kwargs
            )
        except requests.RequestException as exc:
            raise KilnError(
                f"cannot reach the registry {self.registry.host}: {exc}",
                hint="check the registry's address and that it is up; kiln speaks HTTPS "
                "unless --insecure is given (loopback only)",
            ) from None

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One API call; a bearer challenge is answered once, with the auth file's login."""
        url = self._url(path)
        response = self._send(method, url, **kwargs)
        if response.status_code == 401 and self._token is None:
            challenge = response.headers.get("WWW-Authenticate", "")
            if challenge.lower().startswith("bearer "):
                self._token = self._bearer(challenge)
                response = self._send(method, url, **kwargs)
        if response.status_code in (401, 403):
            raise KilnError(
                f"the registry {self.registry.host} refused {method} {path} "
                f"({response.status_code})",
                hint=AUTH_HINT,
            )
        return response

    def _bearer(self, challenge: str) -> str:
        params = dict(_challenge_params(challenge.split(" ", 1)[1]))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise KilnError(f"the registry {self.registry.host} names no token service")
        import requests

        auth = self._basic
        try:
            response = self._session.get(
                realm, params=params, auth=auth, timeout=TIMEOUT, verify=self._verify
            )
            response.raise_for_status()
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise KilnError(
                f"the token service of {self.registry.host} gave no token: {exc}", hint=AUTH_HINT
            ) from None
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise KilnError(f"the token service of {self.registry.host} gave no token")
        return token

    def _failed(self, response: requests.Response, what: str) -> KilnError:
        text = response.text[:300].strip()
        return KilnError(
            f"the registry {self.registry.host} answered {response.status_code} to {what}"
            + (f": {text}" if text else "")
        )

    def connect(self) -> None:
        """Open a connection and answer the registry's login challenge now (the API's
        version check, ``GET /v2/``), so the calls that follow do not wait for it."""
        self.request("GET", "")

    # reading
    def manifest(self, repository: str, reference: str) -> tuple[bytes, str] | None:
        """The manifest at a tag or digest as its bytes and media type; None if there is
        none. By digest, the bytes are checked against it."""
        response = self.request(
            "GET", f"{repository}/manifests/{reference}", headers={"Accept": ACCEPT}, stream=True
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failed(response, f"the manifest {repository}:{reference}")
        data = _read_capped(response, MAX_MANIFEST, f"the manifest {repository}:{reference}")
        if reference.startswith("sha256:") and digest_of(data) != reference:
            raise KilnError(
                f"the registry {self.registry.host} sent a manifest for {repository}@{reference} "
                f"that hashes to {digest_of(data)}: refused",
                hint="the registry's copy is corrupt or tampered with; push the image again",
            )
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return data, media_type

    def fetch_blob(self, repository: str, blob: Descriptor, layout: Layout) -> None:
        """Stream ``blob`` into the store, checked against its digest and size."""
        if layout.has_blob(blob.digest):
            layout.verify_blob(blob.digest, f"{repository}@{blob.digest}")
            return
        response = self.request("GET", f"{repository}/blobs/{blob.digest}", stream=True)
        if response.status_code == 404:
            raise NotFound(
                f"the registry {self.registry.host} has no blob {blob.digest} in {repository}"
            )
        if response.status_code != 200:
            raise self._failed(response, f"the blob {blob.digest}")
        writer = layout.writer(layout.tmp)
        try:
            for chunk in response.iter_content(CHUNK):
                writer.write(chunk)
                if writer.size > blob.size:
                    raise _tampered(
                        self.registry, repository, blob, "is longer than its descriptor"
                    )
            digest = "sha256:" + writer.hexdigest()
            if writer.size != blob.size or digest != blob.digest:
                raise _tampered(self.registry, repository, blob, f"hashes to {digest}")
        except BaseException:
            writer.abort()
            raise
        writer.commit(blob.media_type)

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The descriptors of manifests whose subject is ``digest``: from the referrers API,
        or where the registry has none, from the index at the referrers tag."""
        response = self.request(
            "GET", f"{repository}/referrers/{digest}", headers={"Accept": MEDIA_INDEX}
        )
        if response.status_code == 200:
            return _manifests(response.content, self.registry)
        if response.status_code not in (404, 405):
            raise self._failed(response, f"the referrers of {digest}")
        found = self.manifest(repository, referrers_tag(digest))
        return _manifests(found[0], self.registry) if found else []

    # writing
    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the repository has the blob (asked once per client: the empty config
        every referrer names is asked about once, not once per referrer)."""
        if (repository, digest) in self._there:
            return True
        response = self.request("HEAD", f"{repository}/blobs/{digest}")
        if response.status_code == 200:
            self._there.add((repository, digest))
        return response.status_code == 200

    def mount(self, repository: str, digest: str, source: str) -> bool:
        """Link blob ``digest`` from repository ``source`` of the same registry (no bytes
        sent); False when the registry would rather have it uploaded."""
        response = self.request(
            "POST", f"{repository}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        if response.status_code == 202 and "Location" in response.headers:
            self._send("DELETE", self._location(response))  # the upload it opened instead
        return response.status_code == 201

    def _location(self, response: requests.Response) -> str:
        location = response.headers["Location"]
        if location.startswith("/"):
            location = f"{self._scheme}://{self.registry.host}{location}"
        return location

    def push_blob(self, repository: str, layout: Layout, blob: Descriptor) -> None:
        """Upload a stored blob unless the registry has it. The registry hashes what it
        receives and refuses a blob that is not what its digest says."""
        if self.has_blob(repository, blob.digest):
            return
        started = self.request("POST", f"{repository}/blobs/uploads/")
        if started.status_code != 202 or "Location" not in started.headers:
            raise self._failed(started, f"an upload to {repository}")
        location = self._location(started)
        separator = "&" if "?" in location else "?"
        with layout.blob_path(blob.digest).open("rb") as data:
            done = self._send(
                "PUT",
                f"{location}{separator}digest={blob.digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
        if done.status_code != 201:
            raise self._failed(done, f"the blob {blob.digest}")
        self._there.add((repository, blob.digest))

    def push_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> requests.Response:
        response = self.request(
            "PUT",
            f"{repository}/manifests/{reference}",
            data=data,
            headers={"Content-Type": media_type},
        )
        if response.status_code != 201:
            raise self._failed(response, f"the manifest {repository}:{reference}")
        return response


def _challenge_params(text: str) -> Iterator[tuple[str, str]]:
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key:
            yield key.strip().lower(), value.strip().strip('"')


def _read_capped(response: requests.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_content(CHUNK):
        data += chunk
        if len(data) > limit:
            raise KilnError(f"{what} is over {limit >> 20} MiB: refused")
    return bytes(data)


def _manifests(data: bytes, registry: Registry) -> list[dict[str, Any]]:
    try:
        index = json.loads(data)
        entries = index["manifests"]
        if not isinstance(entries, list):
            raise TypeError("manifests is not a list")
        return [dict(entry) for entry in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise KilnError(
            f"the registry {registry.host} sent a referrers list kiln cannot read: {exc}"
        ) from None


def _tampered(registry: Registry, repository: str, blob: Descriptor, why: str) -> KilnError:
    return KilnError(
        f"the blob {blob.digest} from {registry.host}/{repository} {why}: refused",
        hint="the registry's copy is corrupt or tampered with; push the image again",
    )
