"""A group's members as fleet/ sees them, and the Driver app/ hands it to act on them.

A member is an ordinary machine named ``<group>-<n>`` (n from 1), its state under
``$KILN_HOME/state/<group>-<n>`` when the group keeps volumes. The decisions in fleet/
(kiln.fleet.groups, kiln.fleet.rollout) read members and act only through a Driver, so the
same decisions run against the machines of this host today and of a worker later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiln.lifecycle.fleetpolicy import GroupSpec

NOT_RUNNING = "not running"  # what Driver.healthy says of a member that is not running
BOOTING = "still booting"  # ... and of one whose systemd has not finished booting
MEMBER_RE = re.compile(r"^(?P<group>[a-z0-9][a-z0-9-]*)-(?P<index>[1-9][0-9]{0,3})$")


def member_name(group: str, index: int) -> str:
    return f"{group}-{index}"


def member_index(group: str, name: str) -> int | None:
    """n of ``<group>-<n>``, or None for a name that is no member name of ``group``."""
    match = MEMBER_RE.match(name)
    if match is None or match["group"] != group:
        return None
    return int(match["index"])


@dataclass(frozen=True)
class Member:
    name: str
    group: str
    index: int
    image: str  # name:version
    digest: str
    state: str  # running, stopped, missing (as kiln ps says)
    address: str = ""
    ports: tuple[str, ...] = ()
    config: dict[str, str] = field(default_factory=dict)  # plain values it was started with
    created: str = ""  # ISO time

    @property
    def running(self) -> bool:
        return self.state == "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "index": self.index,
            "image": self.image,
            "digest": self.digest,
            "state": self.state,
            "address": self.address or None,
            "ports": list(self.ports),
            "config": dict(self.config),
            "created": self.created or None,
        }


class Driver(Protocol):
    """What fleet/ asks of the host's machines (app/fleet implements it)."""

    def members(self, group: str) -> list[Member]:
        """Every machine of ``group`` that exists (not removed), by index."""
        ...

    def start(
        self, group: str, spec: GroupSpec, index: int, digest: str, config: dict[str, str]
    ) -> Member:
        """Boot member ``index`` from the image ``digest`` (of the family spec.image names)
        with the group's network, ports, volumes and secrets and these plain values; return
        once its systemd is PID 1, not waiting for the boot to finish: members boot side by
        side, and their health checks (``healthy``) say when each is up. Raises KilnError
        when it cannot start; nothing of it is left then."""
        ...

    def healthy(self, member: Member) -> tuple[bool, str]:
        """One run of the image's health check in the member now: (passed, what it saw);
        for an image without one, whether its systemd has finished booting. A member that
        is not running is not healthy: (False, NOT_RUNNING)."""
        ...

    def remove(self, member: Member) -> None:
        """Stop and remove the member (its volumes stay)."""
        ...
