"""Fuzzing every decoder: hostile bytes cost a `MeshdError`, never another exception.

Inputs are random bytes, random msgpack-shaped objects, and mutations of
valid messages (bit flips, truncation, extension, insertion, huge declared
lengths, deep nesting, splices). Some mutated payloads are re-signed with the
right key so the fuzz reaches the body checks behind the signature. `merge`
must never raise at all; it only counts rejections, and it must never accept
a record whose bytes differ from one a key holder really signed.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd import identity, wire
from meshd.errors import MeshdError
from meshd.identity import Certificate, Cluster, Revocation
from meshd.records import NodeInfo, ServiceInfo
from meshd.table import Digest, RecordCache, Table, parse_record
from meshd.wire import Domain, MsgType, Signed
from tests.helpers import WALL_MS, contents, make_cluster, wires

CA, MEMBERS = make_cluster(3, "fuzz")
M = MEMBERS[0]
STREAM = wire.MAX_STREAM_FRAME_BYTES
FUZZ_ITERATIONS = 20_000
FUZZ_BUDGET_S = 40.0

NODE = M.node_record(5, tags={"role": "db"})
SERVICE = M.service_record(6)
TOMB = M.tombstone(7, M.service_info("old", 20))
REVOCATION = CA.revocation_wire(MEMBERS[2].cert)
RECORDS = [NODE, MEMBERS[1].node_record(3), SERVICE, TOMB, REVOCATION]
GENUINE = {(bytes(r[1]), bytes(r[2])) for r in RECORDS}


def _digest() -> dict[str, Any]:
    t = CA.table()
    t.merge(RECORDS, WALL_MS)
    return t.digest().to_wire()


DIGEST = _digest()
CORPUS: list[bytes] = [
    wire.encode_message(MsgType.SYNC_DELTA, M.id, {"r": RECORDS, "d": DIGEST}),
    wire.encode_message(MsgType.SYNC_DIGEST, M.id, {"d": DIGEST, "c": []}),
    wire.encode_message(MsgType.GOSSIP, M.id, [SERVICE, TOMB]),
    wire.encode_message(MsgType.PING, M.id, {"seq": 1}),
    *(wire.pack(r) for r in RECORDS),
    M.cert.signed.payload,
    CA.cluster.signed.payload,
    CA.revoke(M.cert).signed.payload,
    wire.pack(M.node_info().to_body()),
    wire.pack(M.service_info().to_body()),
    wire.pack(DIGEST),
]

# Values that have broken decoders elsewhere: wrong types, edge integers, odd text.
NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1.5, float("nan"),
    "", "a", "\u00b2", "\u0663", "db\n", "A", "x" * 300, "10.0.0.1:\u00b2", "10.0.0.1:0",
    "10.0.0.1:65536", "[::1]:53", "fe80::1%eth0", "10.20.0.10", "10.20.0.0/24", "10.20.0.1/24",
    "::/0", "0.0.0.0/0", "fd30:0:0:0::/64", "tcp", "sctp", b"", b"\x00" * 16, b"\x00" * 32,
    b"\xff" * 64, [], [1], [[80, "tcp"]], [["10.0.0.0/8"]], {}, {"blue": ["10.20.0.0/24"]},
    {"": ""}, {b"k": 1}, [[[[[[[[0]]]]]]]],
]


def only_meshd_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a decoder; a `MeshdError` is an answer, anything else fails the test."""
    try:
        return fn(*args)
    except MeshdError:
        return None


def decode_objects(obj: Any) -> None:
    """Every object-level decoder on `obj` and on its immediate parts."""
    parts = [obj]
    if isinstance(obj, list):
        parts += obj[:8]
        if len(obj) == 4 and isinstance(obj[3], (dict, list)):    # an envelope's body
            body = obj[3]
            parts += list(body.values())[:4] if isinstance(body, dict) else body[:8]
    elif isinstance(obj, dict):
        parts += list(obj.values())[:8]
    for part in parts:
        for decoder in (parse_record, Digest.from_wire, NodeInfo.from_body, ServiceInfo.from_body,
                        Signed.from_wire):
            only_meshd_errors(decoder, part)
        if isinstance(part, list) and part and isinstance(part[0], list):
            for item in part[:8]:
                only_meshd_errors(parse_record, item)


def decode_all(data: bytes) -> Any:
    """Every byte-level decoder on `data`; returns what `unpack` made of it, if anything."""
    for decoder in (wire.unpack, wire.unpack_prefix, wire.decode_message, wire.decode_datagram_prefix):
        only_meshd_errors(decoder, data, STREAM)
        only_meshd_errors(decoder, data)                      # the datagram limit path
    only_meshd_errors(identity.signed_from_bytes, data, "fuzz")
    signed = Signed(data, bytes(64))
    for parse in (Certificate.parse, Cluster.from_signed, Revocation.parse):
        only_meshd_errors(parse, signed)
    only_meshd_errors(identity.dearmor, data.decode("latin-1"))
    obj = only_meshd_errors(wire.unpack, data, STREAM)
    if obj is not None:
        decode_objects(obj)
    return obj


def merge_candidates(obj: Any) -> list[Any]:
    """What a receiver would hand to merge from a decoded message: its record-ish lists."""
    if not isinstance(obj, list):
        return [obj]
    if len(obj) == 4 and isinstance(obj[3], dict) and isinstance(obj[3].get("r"), list):
        return obj[3]["r"][:16]
    if len(obj) == 4 and isinstance(obj[3], list):
        return obj[3][:16]
    return [obj]


# --- mutations ---------------------------------------------------------------------------


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            i = rng.randrange(len(out) * 8)
            out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def extend(data: bytes, rng: random.Random) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


def insert(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 8)) + data[i:]


def delete(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + data[i + rng.randint(1, 16):]


def interesting_byte(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice(
        [0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC4, 0xC5, 0xC6, 0xC7, 0xD4, 0xD9, 0xDA, 0xDB,
         0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF])
    return bytes(out)


def huge_length(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice([b"\xdd", b"\xdf", b"\xc6", b"\xdb", b"\xdc", b"\xde"]) \
        + b"\xff\xff\xff\xff"[:rng.randint(2, 4)] + data[i:]


def deep_nesting(data: bytes, rng: random.Random) -> bytes:
    return rng.choice([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01"]) * rng.choice([9, 64, 5000]) + data


def splice(data: bytes, rng: random.Random) -> bytes:
    other = rng.choice(CORPUS)
    return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]


MUTATORS = [flip_bits, truncate, extend, insert, delete, interesting_byte, huge_length,
            deep_nesting, splice]


def mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATORS)(data, rng)
    return data


def mutate_object(obj: Any, rng: random.Random) -> Any:
    """Replace one value somewhere inside a decoded body with a nasty one."""
    if isinstance(obj, dict) and obj and rng.random() < 0.85:
        key = rng.choice(list(obj))
        return {**obj, key: mutate_object(obj[key], rng)}
    if isinstance(obj, list) and obj and rng.random() < 0.85:
        i = rng.randrange(len(obj))
        return obj[:i] + [mutate_object(obj[i], rng)] + obj[i + 1:]
    return rng.choice(NASTY)


def _unsigned(parse: Callable[[Signed], Any]) -> Callable[[Any], Any]:
    """A payload parser fed a mutated body; these parse before (or without) any signature check."""
    return lambda body: parse(Signed(wire.pack(body), bytes(64)))


# Each decoder with a valid input of its own, to mutate field by field.
OBJECT_SEEDS: list[tuple[Callable[[Any], Any], Any]] = [
    (NodeInfo.from_body, M.node_info(tags={"role": "db"}).to_body()),
    (ServiceInfo.from_body, M.service_info().to_body()),
    (Digest.from_wire, DIGEST),
    *((parse_record, r) for r in RECORDS),
    (_unsigned(Certificate.parse), wire.unpack(M.cert.signed.payload, STREAM)),
    (_unsigned(Revocation.parse), wire.unpack(CA.revoke(M.cert).signed.payload, STREAM)),
]


def fuzz_objects(rng: random.Random) -> None:
    for decoder, valid in OBJECT_SEEDS:
        only_meshd_errors(decoder, mutate_object(valid, rng))


def resigned_record(rng: random.Random) -> list[Any]:
    """A record whose payload was changed inside, then honestly signed by its origin."""
    _, payload, _ = rng.choice([NODE, SERVICE, TOMB])
    fields = mutate_object(wire.unpack(payload, STREAM), rng)
    return [0, *identity.sign(M.key, Domain.RECORD, wire.pack(fields)).to_wire()]


def resigned_ca_object(rng: random.Random) -> None:
    """Certificates, cluster files and revocations with mutated fields, signed by the CA."""
    for payload, domain, parse in ((M.cert.signed.payload, Domain.CERT, Certificate.parse),
                                   (CA.cluster.signed.payload, Domain.CLUSTER, Cluster.from_signed),
                                   (CA.revoke(M.cert).signed.payload, Domain.REVOCATION,
                                    Revocation.parse)):
        body = mutate_object(wire.unpack(payload, STREAM), rng)
        signed = identity.sign(CA.key, domain, wire.pack(body))
        only_meshd_errors(parse, signed)
        only_meshd_errors(CA.trust().verify_certificate, signed, WALL_MS)
        only_meshd_errors(CA.trust().verify_revocation, signed)


def base_table() -> Table:
    t = CA.table(cache=RecordCache())
    t.merge([MEMBERS[1].node_record(1), MEMBERS[2].node_record(1)], WALL_MS)
    return t


def assert_only_genuine(t: Table, before: dict[Any, Any]) -> None:
    """Without its origin's key, no mutation gets a record in: all are as signed, or were there."""
    for r in t:
        assert (r.signed.payload, r.signed.signature) in GENUINE or contents(t)[r.ident] == \
            before.get(r.ident), r


def assert_table_consistent(t: Table) -> None:
    """What a merge accepted, a fresh table accepts again to the byte (and hashes alike)."""
    again = CA.table()
    again.merge(wires(t), WALL_MS)
    assert contents(again) == contents(t) and again.table_hash == t.table_hash


# --- hypothesis --------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=70) | st.sampled_from(NASTY[:40]),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_meshd_errors(data: bytes) -> None:
    decode_all(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CORPUS), st.randoms(use_true_random=False))
def test_mutated_messages_raise_only_meshd_errors(data: bytes, rng: random.Random) -> None:
    t = base_table()
    before = contents(t)
    obj = decode_all(mutate(data, rng))
    t.merge(merge_candidates(obj), WALL_MS)
    assert_only_genuine(t, before)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_random_objects_raise_only_meshd_errors(obj: Any) -> None:
    decode_objects(obj)
    data = wire.pack(obj)
    decode_all(data)
    base_table().merge(merge_candidates(obj), WALL_MS)


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False))
def test_resigned_mutations_raise_only_meshd_errors(rng: random.Random) -> None:
    t = base_table()
    t.merge([NODE], WALL_MS)
    t.merge([resigned_record(rng) for _ in range(4)], WALL_MS)
    assert_table_consistent(t)
    resigned_ca_object(rng)
    for _ in range(20):
        fuzz_objects(rng)


def test_seeded_fuzz_loop() -> None:
    """20,000 seeded iterations over every decoder; bounded in time, replayable by seed."""
    rng = random.Random(20_260_101)
    plain, resigned = base_table(), base_table()
    before = contents(plain)
    start = time.monotonic()
    for i in range(FUZZ_ITERATIONS):
        data = mutate(rng.choice(CORPUS), rng)
        obj = decode_all(data)
        plain.merge(merge_candidates(obj), WALL_MS)
        fuzz_objects(rng)
        if i % 20 == 0:
            resigned.merge([resigned_record(rng)], WALL_MS)
        if i % 200 == 0:
            resigned_ca_object(rng)
        if i % 1000 == 999:
            assert time.monotonic() - start < FUZZ_BUDGET_S, f"fuzz too slow at iteration {i}"
    # Unsigned mutations never got a record in that its origin did not sign byte for byte.
    assert_only_genuine(plain, before)
    assert_table_consistent(plain)
    assert_table_consistent(resigned)
