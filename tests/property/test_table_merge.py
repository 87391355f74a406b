"""Hypothesis: the table is a state CRDT whatever the delivery, and anti-entropy converges.

Records come from four node keys of one CA with random kinds, keys and
versions: node records (two bodies per version, so equal-version ties
happen), service records inside each certificate's grant, tombstones, and a
CA revocation of one member. Every record is signed once (cached) through
`Table.publish`; one `RecordCache` is shared so examples stay fast.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.table import RecordCache, Table
from tests.helpers import WALL_MS, contents, make_cluster, wires

CA, MEMBERS = make_cluster(4, "prop")
REVOKED = 3
CACHE = RecordCache()
SETTINGS = settings(max_examples=150, deadline=None)

Spec = tuple[Any, ...]
VERSION_AT = {"node": 2, "service": 3, "tomb": 3}  # where each spec keeps its version

node_specs = st.tuples(st.just("node"), st.integers(0, 3), st.integers(1, 8), st.integers(0, 1))
service_specs = st.tuples(st.just("service"), st.integers(0, 3), st.integers(0, 2),
                          st.integers(1, 8), st.integers(1, 2))
tombstone_specs = st.tuples(st.just("tomb"), st.integers(0, 3), st.integers(0, 2),
                            st.integers(1, 8))
specs = st.one_of(node_specs, service_specs, tombstone_specs, st.just(("revoke", REVOKED)))
spec_sets = st.lists(specs, max_size=24)


@functools.lru_cache(maxsize=None)
def _signed(spec: Spec) -> tuple[Any, ...]:
    kind, m = spec[0], MEMBERS[spec[1]]
    if kind == "node":
        _, _, version, variant = spec
        return tuple(m.node_record(version, tags={"variant": str(variant)}))
    if kind == "service":
        _, _, key, version, weight = spec
        return tuple(m.service_record(version, m.service_info(f"s{key}", 10 + key, weight=weight)))
    if kind == "tomb":
        _, _, key, version = spec
        return tuple(m.tombstone(version, m.service_info(f"s{key}", 10 + key)))
    return tuple(CA.revocation_wire(m.cert))


def record(spec: Spec) -> list[Any]:
    return list(_signed(spec))


def fresh() -> Table:
    return CA.table(cache=CACHE)


def state(spec_list: list[Spec]) -> Table:
    """The table a set of records settles into: two rounds, as anti-entropy would redeliver."""
    t = fresh()
    batch = [record(s) for s in spec_list]
    t.merge(batch, WALL_MS)
    t.merge(batch, WALL_MS)
    return t


def closed(spec_list: list[Spec]) -> list[Spec]:
    """The records a table can keep on its own: none from an origin whose node record it lacks."""
    has_node = {s[1] for s in spec_list if s[0] == "node"}
    return [s for s in spec_list if s[0] in ("node", "revoke") or s[1] in has_node]


def delivered(spec_list: list[Spec], rng: random.Random) -> Table:
    """The same records shuffled, duplicated, split into batches, then redelivered once."""
    t = fresh()
    for _ in range(2):
        stream = [record(s) for s in spec_list for _ in range(rng.randint(1, 3))]
        rng.shuffle(stream)
        while stream:
            cut = rng.randint(1, len(stream))
            t.merge(stream[:cut], WALL_MS)
            stream = stream[cut:]
    return t


def model(spec_list: list[Spec]) -> dict[Any, tuple[int, bytes, bytes]]:
    """What the table must hold, computed without the table: per key the (version, sig) max."""
    wires_ = [record(s) for s in spec_list]
    revoked = any(s[0] == "revoke" for s in spec_list)
    has_node = {s[1] for s in spec_list if s[0] == "node"}
    best: dict[Any, tuple[int, bytes, bytes]] = {}
    for s, (tag, payload, sig) in zip(spec_list, wires_):
        if s[0] == "revoke":
            ident: Any = ("revocation", MEMBERS[REVOKED].cert.serial.hex())
            entry = (1, payload, sig)
        else:
            if (revoked and s[1] == REVOKED) or s[1] not in has_node:
                continue
            m = MEMBERS[s[1]]
            key = "" if s[0] == "node" else m.service_info(f"s{s[2]}", 10 + s[2]).key
            ident = (m.id, "node" if s[0] == "node" else "service", key)
            entry = (s[VERSION_AT[s[0]]], payload, sig)
        if ident not in best or (entry[0], entry[2]) > (best[ident][0], best[ident][2]):
            best[ident] = entry
    return best


def normalised(t: Table) -> dict[Any, tuple[int, bytes, bytes]]:
    """Contents keyed like `model`: revocations by (kind, serial), others by full ident."""
    return {(i[1], i[2]) if i[1] == "revocation" else i: v for i, v in contents(t).items()}


def join(a: Table, b: Table) -> Table:
    t = fresh()
    t.merge(wires(a), WALL_MS)
    t.merge(wires(b), WALL_MS)
    return t


def same(a: Table, b: Table) -> bool:
    return contents(a) == contents(b) and a.table_hash == b.table_hash


@SETTINGS
@given(spec_sets)
def test_table_holds_the_lww_winner_of_every_key(spec_list: list[Spec]) -> None:
    assert normalised(state(spec_list)) == model(spec_list)


@SETTINGS
@given(spec_sets, st.randoms(use_true_random=False))
def test_any_order_and_duplication_converges(spec_list: list[Spec], rng: random.Random) -> None:
    reference = state(spec_list)
    for _ in range(3):
        assert same(delivered(spec_list, rng), reference)


@SETTINGS
@given(spec_sets, spec_sets)
def test_merge_is_commutative(a: list[Spec], b: list[Spec]) -> None:
    ta, tb = state(a), state(b)
    ab, ba = join(ta, tb), join(tb, ta)
    assert same(ab, ba)
    assert same(ab, state(closed(a) + closed(b)))


@SETTINGS
@given(spec_sets, spec_sets, spec_sets)
def test_merge_is_associative(a: list[Spec], b: list[Spec], c: list[Spec]) -> None:
    ta, tb, tc = state(a), state(b), state(c)
    assert same(join(join(ta, tb), tc), join(ta, join(tb, tc)))


@SETTINGS
@given(spec_sets)
def test_merge_is_idempotent(a: list[Spec]) -> None:
    ta = state(a)
    assert same(join(ta, ta), ta)
    before = ta.table_hash
    result = ta.merge(wires(ta), WALL_MS)
    assert not result.changes and not result.rejected and result.duplicates == len(ta)
    assert ta.table_hash == before


@SETTINGS
@given(spec_sets, spec_sets, st.randoms(use_true_random=False))
def test_digest_and_delta_both_ways_make_tables_equal(a: list[Spec], b: list[Spec],
                                                      rng: random.Random) -> None:
    """One push-pull, in the order `gossip/sync.py` runs it, from any two histories."""
    ta, tb = delivered(a, rng), delivered(b, rng)
    digest_a = ta.digest()
    delta_b, digest_b = tb.delta_since(digest_a), tb.digest()
    ta.merge([r.to_wire() for r in delta_b], WALL_MS)
    tb.merge([r.to_wire() for r in ta.delta_since(digest_b)], WALL_MS)
    assert same(ta, tb)
    assert same(ta, state(closed(a) + closed(b)))
    assert ta.delta_since(tb.digest()) == [] and tb.delta_since(ta.digest()) == []


@SETTINGS
@given(spec_sets, st.randoms(use_true_random=False))
def test_sync_from_a_lossy_subset_converges(a: list[Spec], rng: random.Random) -> None:
    """A table that got a random subset of pushes (a newer one overtaking a lost older one)."""
    full = state(a)
    partial = delivered([s for s in a if rng.random() < 0.5], rng)
    partial.merge([r.to_wire() for r in full.delta_since(partial.digest())], WALL_MS)
    assert same(partial, full)


@SETTINGS
@given(spec_sets, spec_sets, spec_sets)
def test_a_fork_and_its_parent_each_end_as_if_built_alone(base: list[Spec], a: list[Spec],
                                                          b: list[Spec]) -> None:
    """Copy-on-write: a fork shares its parent's origin entries, so each side's merges and
    drops must copy before they change one, and leave the other side as it was."""
    parent = state(base)
    child = parent.fork()
    assert same(child, parent) and child.digest() == parent.digest()
    for table, more in ((parent, a), (child, b)):
        table.merge([record(s) for s in more], WALL_MS)
        table.merge([record(s) for s in more], WALL_MS)
    assert same(parent, state(closed(base) + a))
    assert same(child, state(closed(base) + b))
    child.drop_origin(MEMBERS[0].id, WALL_MS)
    assert same(parent, state(closed(base) + a))
    assert child.of_origin(MEMBERS[0].id) == []
