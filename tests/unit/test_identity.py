"""Keys, the cluster file, certificates, revocations and the `Trust` that checks them."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from meshd import identity, wire
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
from meshd.identity import Certificate, Cluster, Revocation
from meshd.wire import Domain, Signed
from tests.helpers import DAY_MS, MESH_PREFIX, WALL_MS, make_ca, make_cluster, seed, signing_key

NB, NA = WALL_MS - DAY_MS, WALL_MS + 30 * DAY_MS


def net(text: str) -> identity.IPNetwork:
    return ipaddress.ip_network(text)


# --- keys and signatures ---------------------------------------------------------------


def test_keys_are_deterministic_from_seed() -> None:
    a, b = signing_key("x"), signing_key("x")
    assert identity.public_id(a) == identity.public_id(b) and len(identity.public_id(a)) == 32
    assert identity.public_id(signing_key("y")) != identity.public_id(a)
    with pytest.raises(UsageError):
        identity.signing_key_from_seed(b"short")


def test_sign_verify_round_trip_and_tamper() -> None:
    key = signing_key("k")
    signed = identity.sign(key, Domain.RECORD, b"payload")
    identity.verify(identity.public_id(key), Domain.RECORD, signed)
    with pytest.raises(BadSignatureError):
        identity.verify(identity.public_id(key), Domain.RECORD, Signed(b"payloae", signed.signature))
    with pytest.raises(BadSignatureError):
        identity.verify(identity.public_id(signing_key("other")), Domain.RECORD, signed)
    with pytest.raises(BadSignatureError):           # a malformed signer is a bad signature too
        identity.verify(b"\x00" * 31, Domain.RECORD, signed)


@pytest.mark.parametrize("made", list(Domain))
def test_signature_under_one_domain_never_verifies_under_another(made: Domain) -> None:
    key = signing_key("k")
    signed = identity.sign(key, made, b"same bytes")
    for other in Domain:
        if other is made:
            identity.verify(identity.public_id(key), other, signed)
        else:
            with pytest.raises(BadSignatureError):
                identity.verify(identity.public_id(key), other, signed)


def test_wireguard_keys_match_rfc7748() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert identity.wg_public(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    clamped = identity.wg_private_from_random(b"\xff" * 32)
    assert clamped[0] & 7 == 0 and clamped[31] & 0x80 == 0 and clamped[31] & 0x40
    with pytest.raises(UsageError):
        identity.wg_private_from_random(b"\x00" * 31)


def test_base64_keys() -> None:
    raw = seed("wg")
    assert identity.from_b64(identity.b64(raw) + "\n", 32, "wg.key") == raw
    with pytest.raises(KeyFileError, match="wg.key"):
        identity.from_b64("not base64!", 32, "wg.key")
    with pytest.raises(KeyFileError, match="32-byte"):
        identity.from_b64(identity.b64(raw[:16]), 32, "wg.key")
    assert len(identity.short_id(raw)) == 12


# --- armored files ---------------------------------------------------------------------


def test_armor_round_trip_and_kind_check() -> None:
    raw = bytes(range(256))
    text = identity.armor(identity.LABELS["cert"], raw)
    assert text.startswith("-----BEGIN MESHD CERTIFICATE-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    assert identity.dearmor(text) == ("MESHD CERTIFICATE", raw)
    assert identity.expect_armor("\n  " + text + "\n", "cert") == raw
    with pytest.raises(KeyFileError, match="expected a meshd revocation"):
        identity.expect_armor(text, "revocation")


@pytest.mark.parametrize("text", [
    "",
    "hello",
    "-----BEGIN MESHD CERTIFICATE-----\nAAAA\n-----END MESHD CLUSTER-----\n",
    "-----BEGIN MESHD THING-----\nAAAA\n-----END MESHD THING-----\n",
    "-----BEGIN MESHD CERTIFICATE-----\n!!!!\n-----END MESHD CERTIFICATE-----\n",
])
def test_dearmor_rejects_garbage(text: str) -> None:
    with pytest.raises(KeyFileError):
        identity.dearmor(text)


def test_signed_from_bytes() -> None:
    signed = identity.sign(signing_key("k"), Domain.CERT, b"x")
    assert identity.signed_from_bytes(wire.pack(signed.to_wire()), "cert") == signed
    with pytest.raises(WireError):
        identity.signed_from_bytes(b"\x92\xc4\x01x", "cert")


# --- names and prefixes ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "db", "h-1", "x" * 63, "0abc"])
def test_dns_labels_accepted(name: str) -> None:
    assert identity.check_label(name, "name") == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a.b", "a_b", "x" * 64, "db\n", "\u00e9"])
def test_dns_labels_rejected(name: str) -> None:
    with pytest.raises(UsageError):
        identity.check_label(name, "name")


def test_parse_network() -> None:
    assert identity.parse_network("10.0.0.0/8", "x") == net("10.0.0.0/8")
    with pytest.raises(UsageError, match="host bits"):
        identity.parse_network("10.0.0.1/8", "x")
    with pytest.raises(UsageError, match="not a CIDR"):
        identity.parse_network("ten", "x")


# --- cluster file ----------------------------------------------------------------------


def test_cluster_round_trip_and_mesh_addresses() -> None:
    ca = make_ca()
    again = Cluster.from_signed(ca.cluster.signed)
    assert again == ca.cluster and again.mesh_prefix == MESH_PREFIX
    assert again.service_range == identity.DEFAULT_SERVICE_RANGE and again.dataplane == "routed"
    ids = [identity.public_id(signing_key(f"n{i}")) for i in range(50)]
    addrs = {ca.cluster.mesh_address(i) for i in ids}
    assert len(addrs) == 50 and all(a in MESH_PREFIX for a in addrs)
    assert ca.cluster.mesh_address(ids[0]) == again.mesh_address(ids[0])


@pytest.mark.parametrize("args", [
    (ipaddress.IPv6Network("2001:db8::/48"), identity.DEFAULT_SERVICE_RANGE, "routed"),
    (ipaddress.IPv6Network("fd00::/64"), identity.DEFAULT_SERVICE_RANGE, "routed"),
    (MESH_PREFIX, ipaddress.IPv4Network("10.0.0.0/30"), "routed"),
    (MESH_PREFIX, identity.DEFAULT_SERVICE_RANGE, "overlay"),
])
def test_cluster_issue_validates(
        args: tuple[ipaddress.IPv6Network, ipaddress.IPv4Network, str]) -> None:
    with pytest.raises(UsageError):
        Cluster.issue(signing_key("ca"), *args, WALL_MS)


def test_cluster_tamper_and_self_signature() -> None:
    ca = make_ca()
    payload = bytearray(ca.cluster.signed.payload)
    payload[-1] ^= 1
    with pytest.raises(BadSignatureError):
        Cluster.from_signed(Signed(bytes(payload), ca.cluster.signed.signature))
    # A cluster file signed by a key other than the one it names is refused.
    body = wire.unpack(ca.cluster.signed.payload)
    forged = identity.sign(signing_key("mallory"), Domain.CLUSTER, wire.pack(body))
    with pytest.raises(BadSignatureError):
        Cluster.from_signed(forged)
    # The CA's cluster signature does not double as a certificate signature.
    with pytest.raises(BadSignatureError):
        identity.verify(ca.id, Domain.CERT, ca.cluster.signed)


# --- certificates ----------------------------------------------------------------------


def test_certificate_round_trip_and_grants() -> None:
    ca, (m,) = make_cluster(1)
    cert = Certificate.parse(m.cert.signed)
    assert cert == m.cert and cert.node_id == m.id and cert.issuer == ca.id and cert.name == "n0"
    assert cert.allows("blue", net("10.20.0.0/24")) and cert.allows("blue", net("10.20.0.7/32"))
    assert cert.allows("red", net("fd30:0:0:0:1::/80"))
    assert not cert.allows("blue", net("10.20.1.0/24"))       # neighbour's subnet
    assert not cert.allows("blue", net("10.20.0.0/23"))       # wider than the grant
    assert not cert.allows("green", net("10.20.0.0/24"))      # VPC not granted
    assert not cert.allows("blue", net("::/0"))                # other IP version
    cert.check_grant("red", net("10.30.0.128/25"))
    with pytest.raises(GrantViolationError, match="outside its grant"):
        cert.check_grant("blue", net("10.21.0.0/24"))
    with pytest.raises(GrantViolationError, match="not granted VPC"):
        cert.check_grant("green", net("10.20.0.0/24"))


@pytest.mark.parametrize("kwargs", [
    {"name": "Bad_Name"},
    {"node_id": b"\x00" * 31},
    {"not_after_ms": NB},
    {"vpcs": {"Blue": []}},
    {"vpcs": {"blue": [net(f"10.{i}.0.0/16") for i in range(17)]}},
    {"vpcs": {f"v{i}": [] for i in range(65)}},
])
def test_certificate_issue_validates(kwargs: dict) -> None:
    args = {"node_id": bytes(32), "name": "n", "vpcs": {}, "not_before_ms": NB,
            "not_after_ms": NA, "serial": bytes(16)} | kwargs
    with pytest.raises(UsageError):
        Certificate.issue(signing_key("ca"), **args)


@pytest.mark.parametrize("change", [
    {"vpcs": {"Blue": ["10.0.0.0/8"]}},
    {"vpcs": {"blue": ["10.0.0.1/8"]}},
    {"vpcs": {"blue": "10.0.0.0/8"}},
    {"vpcs": {"blue": [167772160]}},        # an int is not a prefix, though ip_network takes it
    {"vpcs": {"blue": [b"\n\x00\x00\x00"]}},
    {"name": "db\n"},
    {"name": 7},
    {"serial": b"short"},
    {"node": b"x" * 33},
    {"nb": -1},
])
def test_certificate_parse_rejects_bad_fields(change: dict) -> None:
    ca, (m,) = make_cluster(1)
    body = wire.unpack(m.cert.signed.payload) | change
    with pytest.raises(WireError):
        Certificate.parse(identity.sign(ca.key, Domain.CERT, wire.pack(body)))


# --- trust: chain, window, revocation --------------------------------------------------


def test_trust_accepts_own_ca_certificate() -> None:
    ca, (m,) = make_cluster(1)
    assert ca.trust().verify_certificate(m.cert.signed, WALL_MS) == m.cert


def test_certificate_from_another_ca_is_unknown_ca() -> None:
    ca, (m,) = make_cluster(1)
    other = make_ca("other")
    stranger = other.certify(m.key, "n0", {})
    with pytest.raises(UnknownCAError):
        ca.trust().verify_certificate(stranger.signed, WALL_MS)
    assert UnknownCAError.reason == "unknown_ca"


def test_certificate_naming_our_ca_but_signed_by_another_is_bad_signature() -> None:
    ca, (m,) = make_cluster(1)
    body = wire.unpack(m.cert.signed.payload) | {"vpcs": {"blue": ["0.0.0.0/0"]}}
    forged = identity.sign(signing_key("mallory"), Domain.CERT, wire.pack(body))
    with pytest.raises(BadSignatureError):
        ca.trust().verify_certificate(forged, WALL_MS)
    # Nor may the CA's signature from another domain be replayed as a certificate.
    under_record = identity.sign(ca.key, Domain.RECORD, m.cert.signed.payload)
    with pytest.raises(BadSignatureError):
        ca.trust().verify_certificate(under_record, WALL_MS)


def test_trust_cache_does_not_trust_a_changed_payload() -> None:
    ca, (m,) = make_cluster(1)
    trust = ca.trust()
    trust.verify_certificate(m.cert.signed, WALL_MS)
    body = wire.unpack(m.cert.signed.payload) | {"vpcs": {"blue": ["0.0.0.0/0"]}}
    same_sig = Signed(wire.pack(body), m.cert.signed.signature)
    with pytest.raises(BadSignatureError):
        trust.verify_certificate(same_sig, WALL_MS)


def test_validity_window_with_skew_at_both_edges() -> None:
    ca = make_ca()
    key = signing_key("node")
    cert = ca.certify(key, "n", {}, not_before_ms=NB, not_after_ms=NA)
    skew = 60_000
    trust = ca.trust(skew_ms=skew)
    for ok in (NB - skew, NB, WALL_MS, NA, NA + skew):
        trust.verify_certificate(cert.signed, ok)
    with pytest.raises(CertificateNotYetValidError):
        trust.verify_certificate(cert.signed, NB - skew - 1)
    with pytest.raises(CertificateExpiredError):
        trust.verify_certificate(cert.signed, NA + skew + 1)
    strict = ca.trust(skew_ms=0)
    with pytest.raises(CertificateExpiredError):
        strict.verify_certificate(cert.signed, NA + 1)
    with pytest.raises(CertificateNotYetValidError):
        strict.verify_certificate(cert.signed, NB - 1)
    assert identity.DEFAULT_SKEW_MS == 300_000


def test_revoked_certificate_is_refused() -> None:
    ca, (m, n) = make_cluster(2)
    trust = ca.trust()
    rev = trust.verify_revocation(ca.revoke(m.cert).signed)
    assert (rev.serial, rev.node_id, rev.until_ms) == (m.cert.serial, m.id, m.cert.not_after_ms)
    assert trust.add_revocation(rev) and not trust.add_revocation(rev)
    with pytest.raises(RevokedError):
        trust.verify_certificate(m.cert.signed, WALL_MS)
    trust.verify_certificate(n.cert.signed, WALL_MS)      # others unaffected


def test_revocations_are_checked_and_expire_with_the_certificate() -> None:
    ca, (m,) = make_cluster(1)
    other = make_ca("other")
    with pytest.raises(UsageError):
        Revocation.issue(other.key, m.cert, WALL_MS)       # not this CA's certificate
    foreign = other.revoke(other.certify(m.key, "n0", {}))
    with pytest.raises(UnknownCAError):
        ca.trust().verify_revocation(foreign.signed)
    rev = ca.revoke(m.cert)
    tampered = Signed(rev.signed.payload.replace(m.cert.serial, bytes(16)), rev.signed.signature)
    with pytest.raises(BadSignatureError):
        ca.trust().verify_revocation(tampered)
    with pytest.raises(BadSignatureError):                 # a cert signature is not a revocation
        ca.trust().verify_revocation(replace(rev.signed, signature=m.cert.signed.signature))
    trust = ca.trust()
    trust.add_revocation(rev)
    assert trust.expire_revocations(m.cert.not_after_ms + trust.skew_ms) == []
    assert trust.expire_revocations(m.cert.not_after_ms + trust.skew_ms + 1) == [rev]
    assert trust.revoked == {}
