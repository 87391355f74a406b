"""Record bodies: what a node says about itself and the services it hosts (sans-IO).

A record body is plain msgpack data inside the origin's signed payload. This
module turns bodies into typed, validated objects and back, and checks them
against the origin's certificate: a node may only advertise subnets and
service backends inside what the CA granted it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from meshd.errors import GrantViolationError, WireError, WrongOriginError
from meshd.identity import DNS_LABEL, Certificate, IPNetwork, wire_network
from meshd.wire import Fields, Signed

KIND_NODE = "node"
KIND_SERVICE = "service"
KIND_REVOCATION = "revocation"
KINDS = (KIND_NODE, KIND_SERVICE, KIND_REVOCATION)

NODE_KEY = ""
MAX_ENDPOINTS = 8
MAX_TAGS = 32
MAX_TAG_BYTES = 128
MAX_PORTS = 16
PROTOCOLS = ("tcp", "udp")


def _host_port(value: Any, what: str) -> str:
    """A `host:port` or `[v6]:port` endpoint string, checked but kept as text."""
    if not isinstance(value, str) or len(value) > 64:
        raise WireError(f"{what}: bad endpoint")
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise WireError(f"{what}: {value!r} is not host:port")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise WireError(f"{what}: {value!r} does not name an IP address") from None
    return value


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's own description, published as its one `node` record.

    Its version doubles as the SWIM incarnation: refuting a suspicion means
    publishing a newer NodeInfo, which only the node itself can sign.
    """

    name: str
    cert: Signed = field(repr=False)
    gossip: str | None = None
    endpoints: tuple[str, ...] = ()
    wg_key: bytes | None = None
    subnets: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    left: bool = False

    def to_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cert": self.cert.to_wire(),
            "gossip": self.gossip,
            "ep": list(self.endpoints),
            "wg": self.wg_key,
            "vpcs": {vpc: [str(n) for n in nets] for vpc, nets in self.subnets.items()},
            "tags": dict(self.tags),
            "left": self.left,
        }

    @classmethod
    def from_body(cls, body: Any) -> NodeInfo:
        f = Fields(body, "node")
        name = f.str("name", max_len=63)
        if not DNS_LABEL.match(name):
            raise WireError(f"node: bad name {name!r}")
        gossip = f.str("gossip", max_len=64, optional=True)
        endpoints = f.list("ep", max_len=MAX_ENDPOINTS)
        tags = f.map("tags")
        if len(tags) > MAX_TAGS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= MAX_TAG_BYTES
            for k, v in tags.items()
        ):
            raise WireError("node: tags must be at most 32 short string pairs")
        subnets: dict[str, tuple[IPNetwork, ...]] = {}
        for vpc, nets in f.map("vpcs").items():
            if not isinstance(nets, list) or len(nets) > 16:
                raise WireError(f"node: bad subnets for VPC {vpc!r}")
            subnets[vpc] = tuple(wire_network(n, f"node.vpcs.{vpc}") for n in nets)
        return cls(
            name=name,
            cert=Signed.from_wire(f.list("cert", max_len=2), "node.cert"),
            gossip=None if gossip is None else _host_port(gossip, "node.gossip"),
            endpoints=tuple(_host_port(e, "node.ep") for e in endpoints),
            wg_key=f.bytes("wg", size=32, optional=True),
            subnets=subnets,
            tags=tags,
            left=f.bool("left"),
        )

    def check(self, origin: bytes, cert: Certificate) -> None:
        """The certificate must be the origin's, under the same name, granting every subnet."""
        if cert.node_id != origin:
            raise WrongOriginError(f"node {self.name}: certificate belongs to another node")
        if cert.name != self.name:
            raise WrongOriginError(f"node record says {self.name!r}, certificate says {cert.name!r}")
        for vpc, nets in self.subnets.items():
            for net in nets:
                cert.check_grant(vpc, net)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One backend of a service `(vpc, name)`, hosted by the record's origin."""

    vpc: str
    name: str
    backend: ipaddress.IPv4Address | ipaddress.IPv6Address
    ports: tuple[tuple[int, str], ...]
    weight: int = 1
    healthy: bool = True

    @property
    def key(self) -> str:
        return service_key(self.vpc, self.name, self.backend)

    def to_body(self) -> dict[str, Any]:
        return {"vpc": self.vpc, "name": self.name, "backend": str(self.backend),
                "ports": [[p, proto] for p, proto in self.ports],
                "weight": self.weight, "healthy": self.healthy}

    @classmethod
    def from_body(cls, body: Any) -> ServiceInfo:
        f = Fields(body, "service")
        vpc, name = f.str("vpc", max_len=63), f.str("name", max_len=63)
        if not DNS_LABEL.match(vpc) or not DNS_LABEL.match(name):
            raise WireError("service: VPC and name must be DNS labels")
        try:
            backend = ipaddress.ip_address(f.str("backend", max_len=45))
        except ValueError:
            raise WireError("service: bad backend address") from None
        ports = []
        for item in f.list("ports", max_len=MAX_PORTS):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                    and not isinstance(item[0], bool) and 0 < item[0] < 65536
                    and item[1] in PROTOCOLS):
                raise WireError("service: ports are [port, 'tcp'|'udp'] pairs")
            ports.append((item[0], item[1]))
        return cls(vpc, name, backend, tuple(ports), f.int("weight", hi=1000), f.bool("healthy"))

    def check(self, origin: bytes, cert: Certificate) -> None:
        """A backend must sit inside a subnet the origin's certificate grants in that VPC."""
        net = ipaddress.ip_network(self.backend)
        if not cert.allows(self.vpc, net):
            raise GrantViolationError(
                f"service {self.vpc}/{self.name}: backend {self.backend} is outside "
                f"{cert.name}'s grant")


def service_key(vpc: str, name: str, backend: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The table key of one backend: unique per origin, readable in dumps."""
    return f"{vpc}/{name}/{backend}"
