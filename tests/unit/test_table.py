"""The mesh table: merge rules, the security checks on every record, digests and collection."""

from __future__ import annotations

import ipaddress
from types import ModuleType
from typing import Any

import pytest

from meshd import identity
from meshd import table as table_mod
from meshd import wire
from meshd.errors import CertificateExpiredError, CertificateNotYetValidError, UsageError, WireError
from meshd.records import KIND_NODE, KIND_SERVICE, NODE_KEY, NodeInfo, ServiceInfo
from meshd.table import (
    DEFAULT_TOMBSTONE_GRACE_MS,
    REVOCATION_TAG,
    Digest,
    RecordCache,
    Table,
    VersionClock,
    parse_record,
)
from meshd.wire import Domain
from tests.helpers import (
    DAY_MS,
    WALL_MS,
    Member,
    contents,
    make_ca,
    make_cluster,
    make_member,
    node_of,
    rejections,
    wires,
)


def joined(members: list[Member], **kwargs: Any) -> Table:
    """A table holding each member's node record at version 1."""
    t = members[0].ca.table(**kwargs)
    result = t.merge([m.node_record(1) for m in members], WALL_MS)
    assert not result.rejected
    return t


def assert_rejected(t: Table, record: Any, reason: str | None = None,
                    wall_ms: int = WALL_MS) -> None:
    """Merging `record` is refused (for `reason`, if given) and changes nothing at all."""
    before, digest = contents(t), t.table_hash
    result = t.merge([record], wall_ms)
    assert rejections(result) == 1 and not result.changes, result
    if reason is not None:
        assert result.rejected[reason] == 1, result.rejected
    assert contents(t) == before and t.table_hash == digest


def spy_on_verify(monkeypatch: pytest.MonkeyPatch, module: ModuleType,
                  calls: list[tuple[Any, ...]]) -> None:
    """Patch `module.verify` to note each call's arguments in `calls`; it still verifies."""
    real = module.verify

    def spy(*args: Any) -> None:
        calls.append(args)
        real(*args)

    monkeypatch.setattr(module, "verify", spy)


# --- the basics ------------------------------------------------------------------------


def test_publish_and_read_back() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    t.publish(m.key, KIND_NODE, NODE_KEY, m.node_info(tags={"role": "db"}), 5, WALL_MS)
    info = m.service_info()
    result = t.publish(m.key, KIND_SERVICE, info.key, info, 6, WALL_MS)
    assert [c.old for c in result.changes] == [None]
    node = t.node(m.id)
    assert node is not None and node.version == 5 and isinstance(node.info, NodeInfo)
    assert node.info.tags == {"role": "db"} and node.info.subnets["blue"][0].prefixlen == 25
    assert t.certificate(m.id) == m.cert
    svc = t.get(m.id, KIND_SERVICE, info.key)
    assert svc is not None and svc.info == info and info.key == "blue/db/10.20.0.10"
    assert len(t) == 2 and [r.kind for r in t.nodes()] == [KIND_NODE]


def test_helper_records_are_the_documented_wire_form() -> None:
    """[tag, payload, sig], payload = [origin, kind, key, version, body], signed under RECORD."""
    ca, (m,) = make_cluster(1)
    info = m.service_info()
    published = m.service_record(7, info)
    assert published == m.forge(7, KIND_SERVICE, info.key, info.to_body())
    tag, payload, _ = published
    assert tag == table_mod.RECORD_TAG == 0
    assert wire.unpack(payload) == [m.id, "service", info.key, 7, info.to_body()]


def test_newer_version_replaces_and_reports_the_change() -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    old = t.node(m.id)
    result = t.merge([m.node_record(2, tags={"v": "2"})], WALL_MS)
    assert len(result.changes) == 1 and result.changes[0].old == old
    new = node_of(t, m.id)
    assert new.version == 2 and isinstance(new.info, NodeInfo) and new.info.tags == {"v": "2"}


def test_replay_of_an_older_version_changes_nothing() -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    t.merge([m.node_record(9), m.service_record(8)], WALL_MS)
    before, h = contents(t), t.table_hash
    result = t.merge([m.node_record(1), m.node_record(9), m.service_record(3), m.service_record(8)],
                     WALL_MS)
    assert result.duplicates == 4 and not result.changes and not result.rejected
    assert contents(t) == before and t.table_hash == h


def test_known_versions_are_dropped_before_any_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    calls: list[tuple[Any, ...]] = []
    spy_on_verify(monkeypatch, table_mod, calls)
    old = m.node_record(1)
    t.merge([old, old], WALL_MS)
    assert calls == []
    fresh_table = ca.table(cache=RecordCache())
    fresh_table.merge([m.node_record(1)], WALL_MS)
    assert len(calls) == 1


def test_shared_cache_verifies_each_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ca, (m,) = make_cluster(1)
    record = m.node_record(3)
    cache = RecordCache()
    calls: list[tuple[Any, ...]] = []
    spy_on_verify(monkeypatch, table_mod, calls)
    for _ in range(5):
        assert ca.table(cache=cache).merge([record], WALL_MS).changes
    assert len(calls) == 1


def test_equal_versions_tie_break_on_signature() -> None:
    """An origin that signs two bodies at one version: every table keeps the same one."""
    ca, (m,) = make_cluster(1)
    a, b = m.node_record(4, tags={"x": "a"}), m.node_record(4, tags={"x": "b"})
    t1, t2 = joined([m]), joined([m])
    t1.merge([a, b], WALL_MS)
    t2.merge([b, a], WALL_MS)
    assert contents(t1) == contents(t2) and t1.table_hash == t2.table_hash
    assert node_of(t1, m.id).signed.signature == max(a[2], b[2])


def test_merge_counts_malformed_input_and_carries_on() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    result = t.merge([None, 7, [0, b"x"], [9, b"x", bytes(64)], [0, b"\xc1", bytes(64)],
                      m.node_record(1)], WALL_MS)
    assert result.rejected["malformed"] == 5 and len(result.changes) == 1


def test_bool_tag_is_not_a_record_tag() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    for tag in (False, True):
        record = m.node_record(1)
        record[0] = tag
        assert_rejected(t, record, "malformed")
        with pytest.raises(WireError):
            parse_record(record)


# --- security: what a receiver refuses -------------------------------------------------


def test_flipped_bit_anywhere_in_a_signed_record_is_rejected() -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    tag, payload, sig = m.service_record(2)
    for i in range(len(payload) * 8):
        flipped = bytearray(payload)
        flipped[i // 8] ^= 1 << (i % 8)
        assert_rejected(t, [tag, bytes(flipped), sig])
    for i in range(len(sig) * 8):
        flipped = bytearray(sig)
        flipped[i // 8] ^= 1 << (i % 8)
        assert_rejected(t, [tag, payload, bytes(flipped)], "bad_signature")
    assert_rejected(t, [tag ^ 1, payload, sig], "malformed")


def test_flipped_bit_in_a_node_record_is_rejected() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    tag, payload, sig = m.node_record(1)
    for i in range(0, len(payload) * 8, 5):
        flipped = bytearray(payload)
        flipped[i // 8] ^= 1 << (i % 8)
        assert_rejected(t, [tag, bytes(flipped), sig])
    assert len(t) == 0


def test_record_signed_by_a_claiming_origin_b_is_bad_signature() -> None:
    ca, (a, b) = make_cluster(2)
    t = joined([a, b])
    forged_node = a.forge(5, KIND_NODE, NODE_KEY, b.node_info(tags={"evil": "1"}).to_body(),
                          origin=b.id)
    assert_rejected(t, forged_node, "bad_signature")
    info = b.service_info()
    assert_rejected(t, a.forge(5, KIND_SERVICE, info.key, info.to_body(), origin=b.id),
                    "bad_signature")
    assert_rejected(t, a.forge(5, KIND_SERVICE, info.key, None, origin=b.id), "bad_signature")


def test_node_record_carrying_another_nodes_certificate_is_wrong_origin() -> None:
    ca, (a, b) = make_cluster(2)
    t = ca.table()
    stolen = b.node_info()
    assert_rejected(t, a.forge(1, KIND_NODE, NODE_KEY, stolen.to_body()), "wrong_origin")
    renamed = a.node_info().to_body() | {"name": "other"}
    assert_rejected(t, a.forge(1, KIND_NODE, NODE_KEY, renamed), "wrong_origin")


def test_signature_under_another_domain_is_rejected() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    body = m.node_info().to_body()
    for domain in Domain:
        record = m.forge(1, KIND_NODE, NODE_KEY, body, domain=domain)
        if domain is Domain.RECORD:
            continue
        assert_rejected(t, record, "bad_signature")
    assert t.merge([m.forge(1, KIND_NODE, NODE_KEY, body)], WALL_MS).changes


def test_subnet_outside_the_grant_is_a_grant_violation() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    for subnets in ({"blue": (ipaddress.ip_network("10.20.1.0/24"),)},
                    {"blue": (ipaddress.ip_network("10.20.0.0/23"),)},
                    {"green": (ipaddress.ip_network("10.20.0.0/24"),)},
                    {"red": (ipaddress.ip_network("fd30:0:0:1::/64"),)}):
        body = m.node_info(subnets=subnets).to_body()
        assert_rejected(t, m.forge(1, KIND_NODE, NODE_KEY, body), "grant_violation")
    with pytest.raises(UsageError, match="grant_violation"):
        t.publish(m.key, KIND_NODE, NODE_KEY, m.node_info(subnets=subnets), 1, WALL_MS)


@pytest.mark.parametrize("backend,vpc", [
    ("10.20.1.10", "blue"),      # another node's subnet
    ("10.30.0.10", "blue"),      # granted, but in another VPC
    ("10.20.0.10", "green"),     # VPC not granted at all
    ("fd30:0:0:1::1", "red"),
])
def test_service_backend_outside_the_grant_is_rejected(backend: str, vpc: str) -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    info = m.service_info(vpc=vpc, backend=backend)
    assert_rejected(t, m.forge(2, KIND_SERVICE, info.key, info.to_body()), "grant_violation")


def test_service_key_must_match_its_body() -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    info = m.service_info()
    assert_rejected(t, m.forge(2, KIND_SERVICE, "blue/other/10.20.0.10", info.to_body()),
                    "malformed")
    assert_rejected(t, m.forge(2, KIND_NODE, "x", m.node_info().to_body()), "malformed")
    assert_rejected(t, m.forge(2, KIND_NODE, NODE_KEY, None), "malformed")  # no node tombstones


def test_service_before_its_node_record_is_unknown_origin() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    assert_rejected(t, m.service_record(2), "unknown_origin")
    t.merge([m.node_record(1)], WALL_MS)
    assert t.merge([m.service_record(2)], WALL_MS).changes


def test_certificate_from_another_ca_is_unknown_ca() -> None:
    ca, (m,) = make_cluster(1)
    other = make_ca("other")
    stranger = make_member(other, 0)
    assert_rejected(ca.table(), stranger.node_record(1), "unknown_ca")
    # Even with this CA's node key, a foreign certificate proves nothing here.
    body = m.node_info(cert=other.certify(m.key, "n0", {"blue": []})).to_body()
    assert_rejected(ca.table(), m.forge(1, KIND_NODE, NODE_KEY, body | {"vpcs": {}}), "unknown_ca")
    assert_rejected(joined([m]), other.revocation_wire(stranger.cert), "unknown_ca")


def test_revocation_from_another_ca_is_refused_even_through_a_shared_cache() -> None:
    ca, (m,) = make_cluster(1)
    other = make_ca("other")
    foreign = make_member(other, 0)
    cache = RecordCache()
    theirs = other.table(cache=cache)
    theirs.merge([foreign.node_record(1)], WALL_MS)
    rev = other.revocation_wire(foreign.cert)
    assert theirs.merge([rev], WALL_MS).changes               # valid in its own cluster
    assert_rejected(joined([m], cache=cache), rev, "unknown_ca")


def test_expired_certificate_records_are_rejected() -> None:
    ca = make_ca()
    m = make_member(ca, 0, not_before_ms=WALL_MS - 30 * DAY_MS, not_after_ms=WALL_MS - DAY_MS)
    record = m.node_record(1, wall_ms=WALL_MS - 2 * DAY_MS)
    with pytest.raises(CertificateExpiredError):
        ca.trust().verify_certificate(m.cert.signed, WALL_MS)
    assert_rejected(ca.table(), record, "expired")
    assert ca.table().merge([record], WALL_MS - 2 * DAY_MS).changes


def test_not_yet_valid_certificate_records_are_rejected() -> None:
    ca = make_ca()
    m = make_member(ca, 0, not_before_ms=WALL_MS + DAY_MS, not_after_ms=WALL_MS + 9 * DAY_MS)
    record = m.node_record(1, wall_ms=WALL_MS + 2 * DAY_MS)
    with pytest.raises(CertificateNotYetValidError):
        ca.trust().verify_certificate(m.cert.signed, WALL_MS)
    assert_rejected(ca.table(), record, "not_yet_valid")


def test_clock_skew_allowance_at_both_edges_through_merge() -> None:
    ca = make_ca()
    nb, na = WALL_MS, WALL_MS + DAY_MS
    m = make_member(ca, 0, not_before_ms=nb, not_after_ms=na)
    record = m.node_record(1, wall_ms=nb)
    skew = ca.trust().skew_ms
    for wall in (nb - skew, na + skew):
        assert ca.table().merge([record], wall).changes
    assert_rejected(ca.table(), record, "not_yet_valid", wall_ms=nb - skew - 1)
    assert_rejected(ca.table(), record, "expired", wall_ms=na + skew + 1)


def test_revoked_certificate_records_are_rejected() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([other])
    t.add_revocation(ca.revoke(m.cert), WALL_MS)
    assert_rejected(t, m.node_record(1), "revoked")
    assert_rejected(t, m.service_record(2), "unknown_origin")


def test_revocation_drops_the_nodes_existing_records_and_keeps_them_out() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([m, other])
    t.merge([m.service_record(2), m.service_record(3, m.service_info("web", 11))], WALL_MS)
    assert len(t.of_origin(m.id)) == 3
    result = t.merge([ca.revocation_wire(m.cert)], WALL_MS)
    removed = {c.record.ident for c in result.changes if c.new is None}
    assert len(removed) == 3 and t.of_origin(m.id) == [] and t.certificate(m.id) is None
    assert m.cert.serial in t.digest().revocations and t.node(other.id) is not None
    assert_rejected(t, m.node_record(4), "revoked")
    assert t.merge([ca.revocation_wire(m.cert)], WALL_MS).duplicates == 1


def test_renewed_certificate_survives_revocation_of_the_old_one() -> None:
    ca, (m,) = make_cluster(1)
    renewed = ca.certify(m.key, m.name, {"blue": [ipaddress.ip_network("10.20.0.0/24")]},
                         serial=b"\x01" * 16)
    t = joined([m])
    t.merge([m.node_record(2, cert=renewed)], WALL_MS)
    t.merge([ca.revocation_wire(m.cert)], WALL_MS)
    assert node_of(t, m.id).version == 2 and t.certificate(m.id) == renewed


def test_per_origin_record_limit() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([m, other], max_records_per_origin=3)
    assert t.merge([m.service_record(2, m.service_info("a", 1)),
                    m.service_record(3, m.service_info("b", 2))], WALL_MS).changes
    assert_rejected(t, m.service_record(4, m.service_info("c", 3)), "limit")
    # Updating a key it already holds is not a new entry; other origins are unaffected.
    assert t.merge([m.service_record(5, m.service_info("a", 1, weight=9))], WALL_MS).changes
    assert t.merge([other.service_record(2)], WALL_MS).changes


# --- tombstones, collection and floors -------------------------------------------------


def test_tombstone_hides_the_key_and_is_collected_after_grace() -> None:
    ca, (m,) = make_cluster(1)
    t = joined([m])
    info = m.service_info()
    t.merge([m.service_record(2, info)], WALL_MS)
    version = WALL_MS + 10
    t.merge([m.tombstone(version, info)], WALL_MS)
    dead = t.get(m.id, KIND_SERVICE, info.key)
    assert dead is not None and dead.deleted and dead.body is None
    assert t.collect(version + DEFAULT_TOMBSTONE_GRACE_MS) == []
    changes = t.collect(version + DEFAULT_TOMBSTONE_GRACE_MS + 1)
    assert [c.record.version for c in changes] == [version] and changes[0].new is None
    assert t.get(m.id, KIND_SERVICE, info.key) is None
    later = version + DEFAULT_TOMBSTONE_GRACE_MS + 2
    # A late old copy of the deleted key (or of the tombstone) is not resurrected.
    assert_rejected(t, m.service_record(2, info), "stale_version", wall_ms=later)
    assert_rejected(t, m.tombstone(version, info), "stale_version", wall_ms=later)
    assert t.merge([m.service_record(version + 1, info)], later).changes


def test_drop_origin_keeps_older_records_out() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([m, other])
    t.merge([m.node_record(5), m.service_record(4)], WALL_MS)
    changes = t.drop_origin(m.id, WALL_MS)
    assert len(changes) == 2 and all(c.new is None for c in changes)
    assert t.of_origin(m.id) == [] and m.id not in t.digest().versions
    assert_rejected(t, m.node_record(5), "stale_version")
    assert_rejected(t, m.node_record(3), "stale_version")
    assert t.merge([m.node_record(6)], WALL_MS).changes   # it came back with a newer record


def test_reaped_floor_is_forgotten_after_a_day() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([m, other])
    t.drop_origin(m.id, WALL_MS)
    t.collect(WALL_MS + table_mod.REAPED_MEMORY_MS + 1)
    assert t.merge([m.node_record(1)], WALL_MS).changes


def test_collect_drops_origins_with_expired_certificates() -> None:
    ca = make_ca()
    short = make_member(ca, 0, not_after_ms=WALL_MS + DAY_MS)
    long = make_member(ca, 1)
    t = joined([short, long])
    skew = t.trust.skew_ms
    assert t.collect(WALL_MS + DAY_MS + skew) == []
    assert [c.record.origin for c in t.collect(WALL_MS + DAY_MS + skew + 1)] == [short.id]
    assert t.node(long.id) is not None


def test_collect_expires_revocations_with_their_certificates() -> None:
    ca, (m, other) = make_cluster(2)
    t = joined([other])
    t.add_revocation(ca.revoke(m.cert), WALL_MS)
    assert len(t) == 2
    t.collect(m.cert.not_after_ms + t.trust.skew_ms + 1)
    assert t.trust.revoked == {}
    assert all(r.kind != "revocation" for r in t)


# --- hash, digest and delta ------------------------------------------------------------


def test_table_hash_tracks_contents_not_history() -> None:
    ca, (m, n) = make_cluster(2)
    t1, t2 = ca.table(), ca.table()
    assert t1.table_hash == bytes(32)
    t1.merge([m.node_record(1), n.node_record(1), m.node_record(2), m.service_record(3)], WALL_MS)
    t2.merge([n.node_record(1), m.node_record(2), m.service_record(3)], WALL_MS)
    assert t1.table_hash == t2.table_hash != bytes(32)
    t2.drop_origin(m.id, WALL_MS)
    t3 = joined([n])
    assert t2.table_hash == t3.table_hash


def test_a_big_digest_goes_in_chunks_that_each_fit_a_bin() -> None:
    origins = {bytes([i % 256, i // 256]) * 16: i + 1 for i in range(3000)}
    digest = Digest(bytes(32), origins, frozenset(), {o: bytes(8) for o in origins})
    obj = digest.to_wire()
    assert len(obj["v"]) == 3 and all(len(c) <= wire.MAX_BIN_BYTES for c in obj["v"])
    again = Digest.from_wire(wire.unpack(wire.pack(obj), wire.MAX_STREAM_FRAME_BYTES))
    assert again == digest


def test_digest_round_trips_on_the_wire() -> None:
    ca, (m, n) = make_cluster(2)
    t = joined([m, n])
    t.add_revocation(ca.revoke(n.cert), WALL_MS)
    digest = t.digest()
    assert ca.id not in digest.versions and digest.versions == {m.id: 1}
    again = Digest.from_wire(wire.unpack(wire.pack(digest.to_wire())))
    assert again == digest
    assert t.delta_since(again) == []


@pytest.mark.parametrize("mutate", [
    lambda d: d | {"h": b"short"},
    lambda d: d | {"v": [[b"x" * 32, 1, bytes(8)]]},          # entries are packed, not lists
    lambda d: d | {"v": [b"x" * 47]},                          # not a whole entry
    lambda d: d | {"v": [b"x" * 32 + (2**63).to_bytes(8, "big") + bytes(8)]},  # > INT64_MAX
    lambda d: d | {"v": b"x" * 48},                            # a bin, not a list of chunks
    lambda d: d | {"r": [b"x" * 15]},
    lambda d: {"h": d["h"]},
])
def test_digest_from_wire_rejects_malformed(mutate: Any) -> None:
    ca, (m,) = make_cluster(1)
    with pytest.raises(WireError):
        Digest.from_wire(mutate(joined([m]).digest().to_wire()))


def test_warm_does_the_crypto_of_a_merge_ahead_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ca, (a, b, c) = make_cluster(3)
    t = joined([a])
    before = contents(t), t.table_hash
    wires_in = [b.node_record(5), c.node_record(5), b.service_record(6), ["not", "a record"],
                a.node_record(1)]   # a.node_record(1) is not newer than what t holds
    t.warm(wires_in, WALL_MS)       # bad input is left to the merge: nothing raised
    assert (contents(t), t.table_hash) == before
    checks: list[tuple[Any, ...]] = []    # signatures checked: records' and the CA's
    for module in (table_mod, identity):
        spy_on_verify(monkeypatch, module, checks)
    result = t.merge(wires_in, WALL_MS)
    assert checks == [] and result.rejected == {"malformed": 1} and result.duplicates == 1
    assert t.node(b.id) is not None and t.node(c.id) is not None


def test_digest_wire_is_built_once_per_table_state() -> None:
    ca, (a, b) = make_cluster(2)
    t = joined([a])
    first = t.digest_wire()
    assert first == t.digest().to_wire() and t.digest_wire() is first
    t.merge([b.node_record(1)], WALL_MS)
    assert t.digest_wire() == t.digest().to_wire() != first
    t.add_revocation(ca.revoke(b.cert), WALL_MS)
    assert t.digest_wire() == t.digest().to_wire()
    assert Digest.from_wire(t.digest_wire()).revocations == {b.cert.serial}
    t.drop_origin(b.id, WALL_MS)
    assert t.digest_wire() == t.digest().to_wire()


def test_delta_sends_revocations_then_node_records_then_the_rest() -> None:
    ca, (a, b, c) = make_cluster(3)
    src = ca.table()
    src.merge([b.node_record(1), b.service_record(2), a.node_record(7), a.service_record(3),
               c.node_record(1)], WALL_MS)
    src.add_revocation(ca.revoke(c.cert), WALL_MS)
    delta = src.delta_since(ca.table().digest())
    kinds = [r.kind for r in delta]
    assert kinds == ["revocation", "node", "node", "service", "service"]
    assert [r.origin for r in delta[1:3]] == sorted([a.id, b.id])


def test_sync_delivers_an_older_record_overtaken_by_a_newer_push() -> None:
    """A lost push of svc@60 followed by a received node@70: anti-entropy still delivers svc@60."""
    ca, (m,) = make_cluster(1)
    src, dst = joined([m]), joined([m])
    src.merge([m.service_record(60)], WALL_MS)
    src.merge([m.node_record(70)], WALL_MS)
    dst.merge([m.node_record(70)], WALL_MS)
    assert dst.digest().versions == src.digest().versions      # same highest version ...
    assert dst.table_hash != src.table_hash                     # ... different contents
    dst.merge([r.to_wire() for r in src.delta_since(dst.digest())], WALL_MS)
    assert contents(dst) == contents(src) and dst.table_hash == src.table_hash
    assert src.delta_since(dst.digest()) == []


def test_sync_both_ways_makes_tables_equal() -> None:
    ca, (a, b, c) = make_cluster(3)
    t1, t2 = joined([a, b]), joined([b, c])
    t1.merge([a.service_record(5), b.service_record(6)], WALL_MS)
    t2.merge([b.node_record(4), c.service_record(2)], WALL_MS)
    t2.add_revocation(ca.revoke(a.cert), WALL_MS)
    d1 = t1.digest()
    delta2, d2 = t2.delta_since(d1), t2.digest()
    t1.merge([r.to_wire() for r in delta2], WALL_MS)
    t2.merge([r.to_wire() for r in t1.delta_since(d2)], WALL_MS)
    assert contents(t1) == contents(t2) and t1.table_hash == t2.table_hash
    assert t1.of_origin(a.id) == [] and node_of(t1, b.id).version == 4
    assert t1.delta_since(t2.digest()) == [] and t2.delta_since(t1.digest()) == []


def test_wires_of_a_table_rebuild_it() -> None:
    ca, (a, b) = make_cluster(2)
    t = joined([a, b])
    t.merge([a.service_record(3), b.tombstone(4)], WALL_MS)
    again = ca.table()
    again.merge(wires(t), WALL_MS)
    assert contents(again) == contents(t) and again.table_hash == t.table_hash


# --- versions and publishing ----------------------------------------------------------


def test_version_clock_never_goes_backwards() -> None:
    clock = VersionClock()
    assert clock.next(1000) == 1000
    assert clock.next(1000) == 1001          # same millisecond
    assert clock.next(500) == 1002           # wall clock stepped back
    assert clock.next(5000) == 5000
    restarted = VersionClock(last=clock.last)
    assert restarted.next(10) == 5001


def test_publish_refuses_our_own_mistakes() -> None:
    ca, (m,) = make_cluster(1)
    t = ca.table()
    t.publish(m.key, KIND_NODE, NODE_KEY, m.node_info(), 5, WALL_MS)
    with pytest.raises(UsageError, match="not new"):
        t.publish(m.key, KIND_NODE, NODE_KEY, m.node_info(), 5, WALL_MS)
    with pytest.raises(UsageError, match="not new"):
        t.publish(m.key, KIND_NODE, NODE_KEY, m.node_info(), 4, WALL_MS)
    bad = ServiceInfo("blue", "db", ipaddress.ip_address("10.99.0.1"), ((80, "tcp"),))
    with pytest.raises(UsageError, match="grant_violation"):
        t.publish(m.key, KIND_SERVICE, bad.key, bad, 6, WALL_MS)


def test_revocation_record_parses_as_a_ca_record() -> None:
    ca, (m,) = make_cluster(1)
    record = parse_record(ca.revocation_wire(m.cert))
    assert record.tag == REVOCATION_TAG and record.origin == ca.id
    assert record.key == m.cert.serial.hex() and not record.deleted


@pytest.mark.parametrize("prefix", [True, 167772160, b"\n\x14\x00\x00", None])
def test_node_subnet_that_is_not_text_is_malformed(prefix: Any) -> None:
    ca, (m,) = make_cluster(1)
    body = m.node_info().to_body() | {"vpcs": {"blue": [prefix]}}
    assert_rejected(ca.table(), m.forge(1, KIND_NODE, NODE_KEY, body), "malformed")


def test_record_with_an_unhashable_kind_is_malformed() -> None:
    ca, (m,) = make_cluster(1)
    unhashable: tuple[object, ...] = ([], {}, ["node"])
    for kind in unhashable:
        record = m.forge(1, kind, NODE_KEY, m.node_info().to_body())  # type: ignore[arg-type]
        with pytest.raises(WireError):
            parse_record(record)
        assert_rejected(ca.table(), record, "malformed")
        assert_rejected(ca.table(), [0, record[1], bytes(64)], "malformed")  # before any crypto


def test_node_endpoint_with_non_ascii_digits_is_malformed() -> None:
    ca, (m,) = make_cluster(1)
    body = m.node_info().to_body() | {"gossip": "10.0.0.1:\u00b2"}
    assert_rejected(ca.table(), m.forge(1, KIND_NODE, NODE_KEY, body), "malformed")
    body = m.node_info().to_body() | {"ep": ["10.0.0.1:\u0663"]}
    assert_rejected(ca.table(), m.forge(1, KIND_NODE, NODE_KEY, body), "malformed")
