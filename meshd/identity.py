"""Keys, the cluster file, node certificates and revocations (sans-IO).

Trust is rooted in one offline Ed25519 cluster CA. The CA signs three things:
the cluster parameters (`cluster.pub`), node certificates (which bind a node ID
to a name and to the VPC subnets it may serve) and revocations. A receiver
holds only the cluster file; `Trust` checks every certificate against it, the
validity window (with a clock-skew allowance) and the revocations it has seen.

Nothing here reads clocks, files or randomness: wall-clock milliseconds and
random bytes are arguments, so the same code runs in the simulator.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import nacl.exceptions
import nacl.public
import nacl.signing

from meshd import wire
from meshd.errors import (
    BadSignatureError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    GrantViolationError,
    KeyFileError,
    RevokedError,
    UnknownCAError,
    UsageError,
    WireError,
)
from meshd.wire import Domain, Fields, Signed

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DATAPLANES = ("routed", "encap")
DEFAULT_SERVICE_RANGE = ipaddress.IPv4Network("10.96.0.0/16")
DEFAULT_SKEW_MS = 5 * 60 * 1000
MAX_VPCS_PER_CERT = 64
MAX_SUBNETS_PER_VPC = 16
SERIAL_BYTES = 16
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: "$" would accept a trailing newline


# --- keys and signatures -------------------------------------------------------


def signing_key_from_seed(seed: bytes) -> nacl.signing.SigningKey:
    """An Ed25519 key from 32 random bytes the caller supplies."""
    if len(seed) != 32:
        raise UsageError("an Ed25519 seed is 32 bytes")
    return nacl.signing.SigningKey(seed)


def public_id(key: nacl.signing.SigningKey) -> bytes:
    """A node's (or the CA's) ID: its raw 32-byte Ed25519 public key."""
    return bytes(key.verify_key)


def sign(key: nacl.signing.SigningKey, domain: Domain, payload: bytes) -> Signed:
    """Sign payload bytes under a domain tag."""
    return Signed(payload, key.sign(wire.signing_input(domain, payload)).signature)


def verify(signer: bytes, domain: Domain, signed: Signed) -> None:
    """Check `signed` was made by `signer` under `domain`, or raise `BadSignatureError`."""
    try:
        nacl.signing.VerifyKey(signer).verify(
            wire.signing_input(domain, signed.payload), signed.signature
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError, ValueError, TypeError):
        raise BadSignatureError(f"bad {domain.value.decode()} signature") from None


def wg_private_from_random(raw: bytes) -> bytes:
    """A WireGuard private key: 32 random bytes clamped as `wg genkey` does."""
    if len(raw) != 32:
        raise UsageError("a WireGuard key is 32 bytes")
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def wg_public(private: bytes) -> bytes:
    """The X25519 public key `wg pubkey` prints for a private key."""
    return bytes(nacl.public.PrivateKey(private).public_key)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def from_b64(text: str, size: int, what: str) -> bytes:
    """Decode WireGuard-style base64 of a fixed-size key, naming `what` on failure."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{what}: not valid base64") from None
    if len(raw) != size:
        raise KeyFileError(f"{what}: expected a {size}-byte key, got {len(raw)} bytes")
    return raw


def short_id(node_id: bytes) -> str:
    """A readable 12-character prefix of a node ID for logs and tables."""
    return base64.b32encode(node_id).decode("ascii").lower()[:12]


# --- armored text files --------------------------------------------------------

LABELS = {
    "node.key": "MESHD NODE KEY",
    "node.pub": "MESHD NODE PUBLIC KEY",
    "ca.key": "MESHD CA KEY",
    "cluster": "MESHD CLUSTER",
    "cert": "MESHD CERTIFICATE",
    "revocation": "MESHD REVOCATION",
}


def armor(label: str, raw: bytes) -> str:
    """PEM-like text so files are self-describing and `ca show` can tell them apart."""
    body = base64.b64encode(raw).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


def dearmor(text: str) -> tuple[str, bytes]:
    """Split armored text into its label and bytes, or raise `KeyFileError`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 3:
        raise KeyFileError("not a meshd file (expected -----BEGIN ...----- armor)")
    head = re.fullmatch(r"-----BEGIN ([A-Z ]+)-----", lines[0])
    tail = re.fullmatch(r"-----END ([A-Z ]+)-----", lines[-1])
    if not head or not tail or head.group(1) != tail.group(1):
        raise KeyFileError("not a meshd file (bad BEGIN/END lines)")
    label = head.group(1)
    if label not in LABELS.values():
        raise KeyFileError(f"unknown meshd file type {label!r}")
    try:
        raw = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{label}: body is not valid base64") from None
    return label, raw


def expect_armor(text: str, kind: str) -> bytes:
    """Dearmor text that must be of one kind (a key in `LABELS`)."""
    label, raw = dearmor(text)
    if label != LABELS[kind]:
        raise KeyFileError(f"expected a {LABELS[kind].lower()}, found a {label.lower()}")
    return raw


def signed_from_bytes(raw: bytes, what: str) -> Signed:
    """Decode a stored `[payload, signature]` pair with the wire limits."""
    return Signed.from_wire(wire.unpack(raw, wire.MAX_BIN_BYTES), what)


# --- names and prefixes --------------------------------------------------------


def check_label(value: str, what: str) -> str:
    """Names that end up in DNS must be DNS labels."""
    if not isinstance(value, str) or not DNS_LABEL.match(value):
        raise UsageError(
            f"{what} {value!r} is not a DNS label (lowercase letters, digits, '-', 1-63 chars)"
        )
    return value


def parse_network(text: str, what: str) -> IPNetwork:
    """A CIDR with no host bits set, or a `UsageError` naming `what`."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise UsageError(f"{what}: {text} has host bits set") from None
        raise UsageError(f"{what}: {text!r} is not a CIDR prefix") from None


def wire_network(text: Any, what: str) -> IPNetwork:
    """Parse a CIDR received from elsewhere: malformed means a `WireError`."""
    if not isinstance(text, str):  # ip_network would also take ints, bools and packed bytes
        raise WireError(f"{what}: a prefix is text, got {type(text).__name__}")
    try:
        return ipaddress.ip_network(text, strict=True)
    except (ValueError, TypeError):
        raise WireError(f"{what}: bad prefix {text!r}") from None


# --- the cluster file ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cluster:
    """Cluster-wide parameters, signed by the CA whose public key they carry."""

    ca_id: bytes
    mesh_prefix: ipaddress.IPv6Network
    service_range: ipaddress.IPv4Network
    dataplane: str
    created_ms: int
    signed: Signed = field(repr=False, compare=False)

    @classmethod
    def issue(cls, ca_key: nacl.signing.SigningKey, mesh_prefix: ipaddress.IPv6Network,
              service_range: ipaddress.IPv4Network, dataplane: str, wall_ms: int) -> Cluster:
        if mesh_prefix.prefixlen != 48 or not mesh_prefix.subnet_of(ipaddress.IPv6Network("fd00::/8")):
            raise UsageError(f"mesh prefix {mesh_prefix} must be a /48 inside fd00::/8 (a ULA)")
        if not isinstance(service_range, ipaddress.IPv4Network):
            raise UsageError(f"service range {service_range} must be IPv4")
        if not 8 <= service_range.prefixlen <= 28:
            raise UsageError(f"service range {service_range} must be between /8 and /28")
        if dataplane not in DATAPLANES:
            raise UsageError(f"dataplane {dataplane!r} must be one of {', '.join(DATAPLANES)}")
        body = {"ca": public_id(ca_key), "mesh": str(mesh_prefix), "svc": str(service_range),
                "dp": dataplane, "t": wall_ms}
        return cls.from_signed(sign(ca_key, Domain.CLUSTER, wire.pack(body)))

    @classmethod
    def from_signed(cls, signed: Signed) -> Cluster:
        f = Fields(wire.unpack(signed.payload, wire.MAX_BIN_BYTES), "cluster")
        ca_id = f.bytes("ca", size=32)
        verify(ca_id, Domain.CLUSTER, signed)
        mesh = wire_network(f.str("mesh"), "cluster.mesh")
        svc = wire_network(f.str("svc"), "cluster.svc")
        dataplane = f.str("dp")
        if not isinstance(mesh, ipaddress.IPv6Network) or not isinstance(svc, ipaddress.IPv4Network):
            raise WireError("cluster: mesh must be IPv6 and service range IPv4")
        if dataplane not in DATAPLANES:
            raise WireError(f"cluster: unknown dataplane {dataplane!r}")
        return cls(ca_id, mesh, svc, dataplane, f.int("t"), signed)

    def mesh_address(self, node_id: bytes) -> ipaddress.IPv6Address:
        """A node's stable ULA: the cluster /48 plus 80 bits hashed from its ID."""
        suffix = int.from_bytes(hashlib.blake2b(node_id, digest_size=10).digest(), "big")
        return self.mesh_prefix.network_address + (suffix or 1)


# --- certificates --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certificate:
    """The CA's statement: this node ID is `name` and may serve these VPC subnets."""

    node_id: bytes
    name: str
    vpcs: Mapping[str, tuple[IPNetwork, ...]]
    not_before_ms: int
    not_after_ms: int
    serial: bytes
    issuer: bytes
    signed: Signed = field(repr=False, compare=False)

    @classmethod
    def issue(cls, ca_key: nacl.signing.SigningKey, node_id: bytes, name: str,
              vpcs: Mapping[str, list[IPNetwork]], not_before_ms: int, not_after_ms: int,
              serial: bytes) -> Certificate:
        check_label(name, "node name")
        if len(node_id) != 32:
            raise UsageError("a node ID is a 32-byte Ed25519 public key")
        if not_after_ms <= not_before_ms:
            raise UsageError("a certificate must end after it starts")
        if len(vpcs) > MAX_VPCS_PER_CERT:
            raise UsageError(f"at most {MAX_VPCS_PER_CERT} VPCs per certificate")
        grant: dict[str, list[str]] = {}
        for vpc, nets in vpcs.items():
            check_label(vpc, "VPC name")
            if len(nets) > MAX_SUBNETS_PER_VPC:
                raise UsageError(f"VPC {vpc}: at most {MAX_SUBNETS_PER_VPC} subnets")
            grant[vpc] = [str(n) for n in nets]
        body = {"node": node_id, "name": name, "vpcs": grant, "nb": not_before_ms,
                "na": not_after_ms, "serial": serial, "ca": public_id(ca_key)}
        return cls.parse(sign(ca_key, Domain.CERT, wire.pack(body)))

    @classmethod
    def parse(cls, signed: Signed) -> Certificate:
        """Decode a certificate's fields; this alone proves nothing (see `Trust`)."""
        f = Fields(wire.unpack(signed.payload, wire.MAX_BIN_BYTES), "cert")
        raw_vpcs = f.map("vpcs")
        if len(raw_vpcs) > MAX_VPCS_PER_CERT:
            raise WireError("cert: too many VPCs")
        vpcs: dict[str, tuple[IPNetwork, ...]] = {}
        for vpc, nets in raw_vpcs.items():
            if not isinstance(vpc, str) or not DNS_LABEL.match(vpc):
                raise WireError(f"cert: bad VPC name {vpc!r}")
            if not isinstance(nets, list) or len(nets) > MAX_SUBNETS_PER_VPC:
                raise WireError(f"cert: bad subnet list for VPC {vpc}")
            vpcs[vpc] = tuple(wire_network(n, f"cert.vpcs.{vpc}") for n in nets)
        name = f.str("name", max_len=63)
        if not DNS_LABEL.match(name):
            raise WireError(f"cert: bad node name {name!r}")
        return cls(f.bytes("node", size=32), name, vpcs, f.int("nb"), f.int("na"),
                   f.bytes("serial", size=SERIAL_BYTES), f.bytes("ca", size=32), signed)

    def allows(self, vpc: str, prefix: IPNetwork) -> bool:
        """Whether `prefix` lies inside one of the subnets granted for `vpc`."""
        return any(prefix.version == g.version and prefix.subnet_of(g)  # type: ignore[arg-type]
                   for g in self.vpcs.get(vpc, ()))

    def check_grant(self, vpc: str, prefix: IPNetwork) -> None:
        if vpc not in self.vpcs:
            raise GrantViolationError(f"node {self.name} is not granted VPC {vpc}")
        if not self.allows(vpc, prefix):
            granted = ", ".join(str(g) for g in self.vpcs[vpc])
            raise GrantViolationError(
                f"node {self.name}: {prefix} in VPC {vpc} is outside its grant ({granted})")


# --- revocations ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """The CA withdraws one certificate; kept at least until that certificate expires."""

    serial: bytes
    node_id: bytes
    revoked_ms: int
    until_ms: int
    issuer: bytes
    signed: Signed = field(repr=False, compare=False)

    @classmethod
    def issue(cls, ca_key: nacl.signing.SigningKey, cert: Certificate, wall_ms: int) -> Revocation:
        if cert.issuer != public_id(ca_key):
            raise UsageError("this certificate was not issued by this CA")
        body = {"serial": cert.serial, "node": cert.node_id, "t": wall_ms,
                "until": cert.not_after_ms, "ca": cert.issuer}
        return cls.parse(sign(ca_key, Domain.REVOCATION, wire.pack(body)))

    @classmethod
    def parse(cls, signed: Signed) -> Revocation:
        f = Fields(wire.unpack(signed.payload, wire.MAX_BIN_BYTES), "revocation")
        return cls(f.bytes("serial", size=SERIAL_BYTES), f.bytes("node", size=32), f.int("t"),
                   f.int("until"), f.bytes("ca", size=32), signed)


# --- verification --------------------------------------------------------------


class Trust:
    """A node's view of what the cluster CA has said: verifies certs and revocations.

    Verified certificates are cached by signature so a node record seen again
    (gossip relays it many times) costs a dict lookup, not an Ed25519 verify.
    """

    MAX_CACHE = 65_536

    def __init__(self, cluster: Cluster, skew_ms: int = DEFAULT_SKEW_MS,
                 cert_cache: dict[bytes, Certificate] | None = None) -> None:
        self.cluster = cluster
        self.skew_ms = skew_ms
        self.revoked: dict[bytes, Revocation] = {}
        # Shareable (the simulator shares one among thousands of nodes): it holds
        # only what the CA signed, never a node's own revocation or time view.
        self._certs: dict[bytes, Certificate] = {} if cert_cache is None else cert_cache

    def fork(self) -> Trust:
        """Another node's trust in the same CA, knowing the same revocations; the
        certificate cache is shared (it holds only what the CA signed)."""
        twin = Trust(self.cluster, self.skew_ms, self._certs)
        twin.revoked = dict(self.revoked)
        return twin

    def verify_certificate(self, signed: Signed, wall_ms: int) -> Certificate:
        """Chain to the CA, then window and revocation; each failure its own error."""
        cert = self._certs.get(signed.signature)
        if cert is None or cert.signed.payload != signed.payload:
            cert = Certificate.parse(signed)
            if cert.issuer != self.cluster.ca_id:
                raise UnknownCAError(f"certificate for {cert.name} was issued by another CA")
            verify(self.cluster.ca_id, Domain.CERT, signed)
            if len(self._certs) >= self.MAX_CACHE:
                self._certs.clear()
            self._certs[signed.signature] = cert
        self.check_window(cert, wall_ms)
        if cert.serial in self.revoked:
            raise RevokedError(f"certificate of {cert.name} was revoked")
        return cert

    def check_window(self, cert: Certificate, wall_ms: int) -> None:
        if wall_ms + self.skew_ms < cert.not_before_ms:
            raise CertificateNotYetValidError(
                f"certificate of {cert.name} is not valid until {cert.not_before_ms} ms")
        if wall_ms - self.skew_ms > cert.not_after_ms:
            raise CertificateExpiredError(
                f"certificate of {cert.name} expired at {cert.not_after_ms} ms")

    def verify_revocation(self, signed: Signed) -> Revocation:
        """Check a revocation is the CA's; does not yet apply it."""
        rev = Revocation.parse(signed)
        if rev.issuer != self.cluster.ca_id:
            raise UnknownCAError("revocation was issued by another CA")
        verify(self.cluster.ca_id, Domain.REVOCATION, signed)
        return rev

    def add_revocation(self, rev: Revocation) -> bool:
        """Remember a verified revocation; True if it is new."""
        if rev.serial in self.revoked:
            return False
        self.revoked[rev.serial] = rev
        return True

    def expire_revocations(self, wall_ms: int) -> list[Revocation]:
        """Forget revocations whose certificates could no longer verify anyway."""
        gone = [r for r in self.revoked.values() if wall_ms - self.skew_ms > r.until_ms]
        for rev in gone:
            del self.revoked[rev.serial]
        return gone
