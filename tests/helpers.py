"""Deterministic builders shared by the unit and property tests.

Everything is derived from fixed labels (keys are SHA-256 seeds of a name) and
one fixed wall clock, `WALL_MS`, so a failing test replays byte for byte.
Valid records are made through the public API (`Table.publish` on a scratch
table); `Member.forge` signs arbitrary payloads for the attacks valid code
cannot produce.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from meshd import identity, wire
from meshd.identity import Certificate, Cluster, Revocation, Trust
from meshd.records import KIND_NODE, KIND_SERVICE, NODE_KEY, NodeInfo, ServiceInfo
from meshd.table import RECORD_TAG, Record, RecordCache, Table
from meshd.wire import Domain

WALL_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
MESH_PREFIX = ipaddress.IPv6Network("fd5e:5e5e:5e5e::/48")


def seed(label: str) -> bytes:
    """32 deterministic bytes named by a label."""
    return hashlib.sha256(label.encode()).digest()


def signing_key(label: str) -> nacl.signing.SigningKey:
    return identity.signing_key_from_seed(seed(label))


def grant(index: int) -> dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """What member `index` may serve: one subnet in `blue`, two (v4 and v6) in `red`."""
    return {
        "blue": [ipaddress.ip_network(f"10.20.{index}.0/24")],
        "red": [ipaddress.ip_network(f"10.30.{index}.0/24"),
                ipaddress.ip_network(f"fd30:0:0:{index}::/64")],
    }


@dataclass(frozen=True)
class CA:
    """An offline cluster CA with its signed cluster file."""

    label: str
    key: nacl.signing.SigningKey
    cluster: Cluster
    # Shared by scratch tables so building many records verifies each cert once.
    scratch_cache: RecordCache = field(default_factory=RecordCache, repr=False, compare=False)

    @property
    def id(self) -> bytes:
        return self.cluster.ca_id

    def trust(self, skew_ms: int = identity.DEFAULT_SKEW_MS) -> Trust:
        return Trust(self.cluster, skew_ms)

    def table(self, **kwargs: Any) -> Table:
        return Table(self.trust(), **kwargs)

    def certify(self, node_key: nacl.signing.SigningKey, name: str,
                vpcs: dict[str, list[Any]] | None = None, *,
                not_before_ms: int = WALL_MS - DAY_MS, not_after_ms: int = WALL_MS + 30 * DAY_MS,
                serial: bytes | None = None) -> Certificate:
        return Certificate.issue(
            self.key, identity.public_id(node_key), name, vpcs or {}, not_before_ms, not_after_ms,
            serial or seed(f"{self.label}/serial/{name}/{not_after_ms}")[:identity.SERIAL_BYTES])

    def revoke(self, cert: Certificate, wall_ms: int = WALL_MS) -> Revocation:
        return Revocation.issue(self.key, cert, wall_ms)

    def revocation_wire(self, cert: Certificate, wall_ms: int = WALL_MS) -> list[Any]:
        return [1, *self.revoke(cert, wall_ms).signed.to_wire()]


def make_ca(label: str = "ca", dataplane: str = "routed") -> CA:
    key = signing_key(label)
    cluster = Cluster.issue(key, MESH_PREFIX, identity.DEFAULT_SERVICE_RANGE, dataplane, WALL_MS)
    return CA(label, key, cluster)


@dataclass(frozen=True)
class Member:
    """A node key with its certificate, able to publish records about itself."""

    ca: CA
    index: int
    key: nacl.signing.SigningKey
    cert: Certificate

    @property
    def id(self) -> bytes:
        return identity.public_id(self.key)

    @property
    def name(self) -> str:
        return self.cert.name

    def node_info(self, *, cert: Certificate | None = None, tags: dict[str, str] | None = None,
                  subnets: dict[str, tuple[Any, ...]] | None = None, left: bool = False) -> NodeInfo:
        cert = cert or self.cert
        if subnets is None:
            subnets = {"blue": (ipaddress.ip_network(f"10.20.{self.index}.0/25"),)}
        return NodeInfo(
            name=cert.name, cert=cert.signed, gossip=f"10.99.0.{self.index + 1}:7946",
            endpoints=(f"192.0.2.{self.index + 1}:51820",), wg_key=seed(f"wg/{self.index}"),
            subnets=subnets, tags=tags or {}, left=left)

    def service_info(self, name: str = "db", host: int = 10, *, vpc: str = "blue",
                     backend: str | None = None, weight: int = 1, port: int = 5432) -> ServiceInfo:
        addr = ipaddress.ip_address(backend or f"10.20.{self.index}.{host}")
        return ServiceInfo(vpc, name, addr, ((port, "tcp"),), weight, True)

    # --- records through the public API -------------------------------------------------

    def publish(self, kind: str, table_key: str, info: NodeInfo | ServiceInfo | None,
                version: int, wall_ms: int = WALL_MS) -> list[Any]:
        """The wire form of one record, signed by `Table.publish` on a scratch table."""
        scratch = Table(self.ca.trust(), cache=self.ca.scratch_cache)
        if kind != KIND_NODE:
            scratch.merge([self.node_record(1, wall_ms=wall_ms)], wall_ms)
        result = scratch.publish(self.key, kind, table_key, info, version, wall_ms)
        return result.changes[-1].record.to_wire()

    def node_record(self, version: int, *, wall_ms: int = WALL_MS, **info: Any) -> list[Any]:
        return self.publish(KIND_NODE, NODE_KEY, self.node_info(**info), version, wall_ms)

    def service_record(self, version: int, info: ServiceInfo | None = None, *,
                       wall_ms: int = WALL_MS) -> list[Any]:
        info = info or self.service_info()
        return self.publish(KIND_SERVICE, info.key, info, version, wall_ms)

    def tombstone(self, version: int, info: ServiceInfo | None = None) -> list[Any]:
        info = info or self.service_info()
        return self.publish(KIND_SERVICE, info.key, None, version)

    # --- records valid code would refuse to make ----------------------------------------

    def forge(self, version: int, kind: str, table_key: str, body: Any, *,
              origin: bytes | None = None, domain: Domain = Domain.RECORD) -> list[Any]:
        """Sign `[origin, kind, key, version, body]` as given, whatever it claims."""
        payload = wire.pack([origin or self.id, kind, table_key, version, body])
        return [RECORD_TAG, *identity.sign(self.key, domain, payload).to_wire()]


def make_member(ca: CA, index: int, **cert_kwargs: Any) -> Member:
    key = signing_key(f"{ca.label}/node/{index}")
    cert = ca.certify(key, f"n{index}", grant(index), **cert_kwargs)
    return Member(ca, index, key, cert)


def make_cluster(n: int, label: str = "ca") -> tuple[CA, list[Member]]:
    ca = make_ca(label)
    return ca, [make_member(ca, i) for i in range(n)]


# --- reading and comparing tables --------------------------------------------------------


def node_of(table: Table, origin: bytes) -> Record:
    """`table.node(origin)` where the test knows the node is held: fails the test if not."""
    record = table.node(origin)
    assert record is not None, f"the table holds no node record of {origin.hex()}"
    return record


def contents(table: Table) -> dict[tuple[bytes, str, str], tuple[int, bytes, bytes]]:
    """A table's records as plain comparable data: ident -> (version, payload, signature)."""
    return {r.ident: (r.version, r.signed.payload, r.signed.signature) for r in table}


def wires(table: Table) -> list[list[Any]]:
    """Everything a table holds, in the order anti-entropy would send it to a newcomer."""
    newcomer = Table(Trust(table.trust.cluster))
    return [r.to_wire() for r in table.delta_since(newcomer.digest())]


def rejections(result: Any) -> int:
    return sum(result.rejected.values())
