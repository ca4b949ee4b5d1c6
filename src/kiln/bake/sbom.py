"""A CycloneDX SBOM of an image's Debian packages (cyclonedx-python-lib).

Each package is a component with a ``pkg:deb/debian/...`` purl and, where kiln has seen
the .deb, its SHA-256. The serial number and timestamp derive from the image, so the same
image always gets the same SBOM.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from kiln import __version__
from kiln.recipe.lockfile import Deb

MEDIA_TYPE = "application/vnd.cyclonedx+json"


def purl(deb: Deb, distro: str | None) -> PackageURL:
    qualifiers = {"arch": deb.architecture}
    if distro:
        qualifiers["distro"] = distro
    return PackageURL(
        type="deb", namespace="debian", name=deb.name, version=deb.version, qualifiers=qualifiers
    )


def sbom(
    name: str, version: int, digest: str, packages: list[Deb], created: datetime, distro: str | None
) -> str:
    """The SBOM of image ``name:version`` (manifest ``digest``) as CycloneDX 1.6 JSON."""
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"oci:{digest}"))
    bom.metadata.timestamp = created
    image = Component(
        name=name,
        version=str(version),
        type=ComponentType.CONTAINER,
        bom_ref=f"image:{name}:{version}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest.split(":", 1)[1])],
        description=f"kiln {__version__} image {name}:{version} ({digest})",
    )
    bom.metadata.component = image
    components = []
    for deb in sorted(packages):
        component = Component(
            name=deb.name,
            version=deb.version,
            type=ComponentType.LIBRARY,
            purl=purl(deb, distro),
            bom_ref=f"deb:{deb.name}:{deb.architecture}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=deb.sha256)] if deb.sha256 else [],
        )
        bom.components.add(component)
        components.append(component)
    bom.register_dependency(image, components)
    return JsonV1Dot6(bom).output_as_string(indent=2)
