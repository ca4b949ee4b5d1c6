"""The policy file's fleet tables: ``[network]`` (where subnets come from) and ``[groups.NAME]``
(a group of machines kept at its size, and how it moves to a new image).

```toml
[network]
range = "10.231.0.0/16"          # each network gets a /24 of it that no host route overlaps

[groups.web]
image = "web:prod"               # a ref: a channel, name:version, name@sha256:...
count = 4
network = "kiln"                 # made on first use
ports = ["8080-8085:80"]         # member n gets host port 8080+n-1 (surge members too)
config = { log_host = "logs" }   # plain values, as kiln run --set KEY=VALUE
secrets = { db_password = { file = "secrets/db" }, api_token = { env = "API_TOKEN" } }
volumes = true                   # each member's state under $KILN_HOME/state/<group>-<n>

[groups.web.update]
max_unavailable = 1              # healthy members never fewer than count - this
max_surge = 1                    # new members started beside the old before they go
canary = 1                       # members moved first; the rest wait for auto_promote/--promote
auto_promote = false
min_healthy_time = "10s"         # the health check passing continuously this long
healthy_deadline = "5m"          # per member, from its start (also fires if it never starts)
progress_deadline = "10m"        # for the whole rollout
on_failure = "rollback"          # or "pause"
bake_time = "0s"                 # after the last member, until the digest is stable
```

A secret source names a file (relative to the policy file) or an environment variable; the
value itself is never written in the policy file, the catalog or a machine's folder.
Checked strictly, as the rest of the policy file (kiln.lifecycle.policy).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from kiln import refs
from kiln.durations import seconds
from kiln.lifecycle.fleetdefaults import DEFAULT_NETWORK, DEFAULT_RANGE, NETWORK_PREFIX
from kiln.schema import ENV_RE, Model

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
PORT_RE = re.compile(
    r"^(?:(?P<ip>[0-9.]+):)?(?P<first>\d{1,5})(?:-(?P<last>\d{1,5}))?"
    r":(?P<to>\d{1,5})(?:/(?P<proto>tcp|udp))?$"
)


class Strict(Model):
    model_config = ConfigDict(strict=True)


def check_fleet_name(value: str, what: str) -> str:
    if not NAME_RE.match(value) or value.endswith("-"):
        raise ValueError(
            f"'{value}' is not a {what} name: lower case letters, digits and '-', "
            "at most 31 characters"
        )
    return value


class NetworkPolicy(Strict):
    range: str = DEFAULT_RANGE

    @field_validator("range")
    @classmethod
    def _range(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"'{value}' is not an IPv4 network (10.231.0.0/16): {exc}") from None
        if net.prefixlen > NETWORK_PREFIX:
            raise ValueError(f"{value} is smaller than one /{NETWORK_PREFIX} network")
        if not net.is_private:
            raise ValueError(f"{value} is not a private range (RFC 1918)")
        return value

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.range)


class SecretSource(Strict):
    file: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("a secret source is one of file = PATH or env = VARIABLE")
        if self.env is not None and not ENV_RE.match(self.env):
            raise ValueError(f"'{self.env}' is not an environment variable name")
        return self


def _duration(value: str) -> str:
    seconds(value)
    return value


class UpdateSettings(Strict):
    max_unavailable: int = Field(1, ge=0, le=1000)
    max_surge: int = Field(0, ge=0, le=1000)
    canary: int = Field(0, ge=0, le=1000)
    auto_promote: bool = False
    min_healthy_time: str = "10s"
    healthy_deadline: str = "5m"
    progress_deadline: str = "10m"
    on_failure: Literal["rollback", "pause"] = "rollback"
    bake_time: str = "0s"

    _d = field_validator("min_healthy_time", "healthy_deadline", "progress_deadline", "bake_time")(
        _duration
    )

    @model_validator(mode="after")
    def _moves(self) -> UpdateSettings:
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise ValueError(
                "max_unavailable and max_surge are both 0: a rollout could never replace "
                "a member; allow one of them"
            )
        return self

    def seconds(self, key: str) -> int:
        value = getattr(self, key)
        assert isinstance(value, str)
        return seconds(value)


class PortRange(Strict):
    """One ``[HOST_IP:]FIRST[-LAST]:MACHINE_PORT[/tcp|udp]`` of a group: member n gets host
    port FIRST+n-1."""

    host_ip: str | None
    first: int
    last: int
    machine_port: int
    protocol: str = "tcp"

    def for_member(self, index: int) -> str:
        """The ``kiln run --port`` value of member ``index`` (1-based)."""
        port = self.first + index - 1
        if port > self.last:
            raise ValueError(f"ports {self.first}-{self.last} hold no port for member {index}")
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{port}:{self.machine_port}/{self.protocol}"


def parse_port_range(value: str) -> PortRange:
    match = PORT_RE.match(value)
    if match is None:
        raise ValueError(
            f"'{value}' is not a port mapping: [HOST_IP:]HOST_PORT[-LAST]:MACHINE_PORT[/tcp|udp]"
        )
    first = int(match["first"])
    last = int(match["last"] or first)
    to = int(match["to"])
    if not all(1 <= port <= 65535 for port in (first, last, to)) or last < first:
        raise ValueError(f"'{value}': ports are 1-65535 and a range runs upwards")
    if match["ip"]:
        ipaddress.IPv4Address(match["ip"])
    return PortRange(
        host_ip=match["ip"],
        first=first,
        last=last,
        machine_port=to,
        protocol=match["proto"] or "tcp",
    )


class GroupSpec(Strict):
    image: str
    count: int = Field(ge=0, le=250)
    network: str = DEFAULT_NETWORK
    ports: tuple[str, ...] = Field((), strict=False)
    config: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, SecretSource] = Field(default_factory=dict)
    volumes: bool = True
    update: UpdateSettings = UpdateSettings()

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        why = refs.problem(value)
        if why is not None:
            raise ValueError(why)
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        return check_fleet_name(value, "network")

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            parse_port_range(item)
        return value

    @model_validator(mode="after")
    def _room(self) -> GroupSpec:
        most = self.count + self.update.max_surge
        for item in self.ports:
            span = parse_port_range(item)
            if span.last - span.first + 1 < most:
                raise ValueError(
                    f"ports '{item}' hold {span.last - span.first + 1} host ports; count + "
                    f"max_surge = {most} members may run at once: widen the range"
                )
        return self

    def port_ranges(self) -> list[PortRange]:
        return [parse_port_range(item) for item in self.ports]


RESERVED_GROUPS = ("status", "history", "abort")  # kiln rollout's own words


def check_groups(groups: dict[str, GroupSpec]) -> dict[str, GroupSpec]:
    for name in groups:
        check_fleet_name(name, "group")
        if name in RESERVED_GROUPS:
            raise ValueError(f"'{name}' is a word of kiln rollout, not a group name: rename it")
    return groups
