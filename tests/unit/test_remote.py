"""Registry and OCI-folder locations: the grammar skopeo and the distribution spec use,
checked before anything is sent, and the one HTTP rule kiln adds (plain only to loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import BadInput
from kiln.store import remote
from kiln.store.registry import Client, referrers_tag
from kiln.store.remote import Folder, Registry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker://127.0.0.1:5000/team/web:3", Registry("127.0.0.1:5000", "team/web", "3")),
        ("docker://reg.example/web", Registry("reg.example", "web")),
        (
            "docker://[::1]:5000/web@sha256:" + "a" * 64,
            Registry("[::1]:5000", "web", digest="sha256:" + "a" * 64),
        ),
        ("oci:/srv/images:web:3", Folder(Path("/srv/images"), "web:3")),
        ("oci:/srv/images", Folder(Path("/srv/images"))),
    ],
)
def test_locations_parse_as_skopeo_reads_them(text: str, expected: remote.Location) -> None:
    assert remote.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "web:3",
        "docker://",
        "docker://host",
        "docker://host/",
        "docker://HOST/Web:1",
        "docker://host/web:-x",
        "docker://host/web@sha256:abc",
        "docker://ho st/web",
        "docker://host/web\0",
        "docker://host/" + "a" * 300,
        "oci:",
        "oci::tag",
        "oci:/x:bad tag",
    ],
)
def test_malformed_locations_are_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        remote.parse(text)
    assert caught.value.hint and "docker://HOST" in caught.value.hint


def test_a_parent_goes_beside_its_child_and_a_registry_url_is_a_prefix() -> None:
    web = remote.parse("docker://127.0.0.1:5000/team/web:3")
    assert isinstance(web, Registry)
    assert web.sibling("base") == Registry("127.0.0.1:5000", "team/base")
    assert remote.registry_at("docker://127.0.0.1:5000/team/", "web") == Registry(
        "127.0.0.1:5000", "team/web"
    )
    assert referrers_tag("sha256:" + "b" * 64) == "sha256-" + "b" * 64


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example", False),
    ],
)
def test_plain_http_is_for_loopback_only(host: str, loopback: bool) -> None:
    where = Registry(host, "web")
    assert where.loopback is loopback
    if loopback:
        Client(where, insecure=True).close()
    else:
        with pytest.raises(BadInput, match="loopback"):
            Client(where, insecure=True)
