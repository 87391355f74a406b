"""The gossip engine as plain objects: engines wired together by a tiny in-memory router.

As in aioquic's tests, no loop and no sockets: each step hands one engine's
datagrams to the others, at a virtual time the test controls.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Callable

import pytest

from meshd import wire
from meshd.gossip.auth import MAC_BYTES
from meshd.gossip.claims import CLAIM_DEAD, CLAIM_SUSPECT, Claim
from meshd.gossip.engine import (
    EAGER_QUEUE_LIMIT, JOIN_SETTLE_GAPS, PROBE_SPREAD, UNSETTLED_PROBES, Gossip, parse_address,
)
from meshd.gossip.events import (
    ALIVE, DEAD, LEFT, SUSPECT, MemberAlive, MemberDied, MemberJoined, MemberLeft, MemberSuspected,
    MemberUpdated,
)
from meshd.gossip.tuning import GossipTuning, eager_fanout, suspicion_max_s
from meshd.records import NodeInfo
from meshd.table import VersionClock
from meshd.wire import MsgType
from tests.helpers import WALL_MS, Member, make_ca, make_cluster, make_member, node_of

Drop = Callable[[int, int, bytes], bool]
#: The default (lan) probe interval: the tests below count rounds, not seconds.
PERIOD = GossipTuning.lan().probe_interval_s
PERIOD_MS = int(PERIOD * 1000)


class Router:
    """Delivers datagrams between engines by address; `drop(src, dst, data)` loses some."""

    def __init__(self, members: list[Member], tuning: GossipTuning | None = None) -> None:
        self.now = 0.0
        self.engines = [
            Gossip(key=m.key, table=m.ca.table(), info=m.node_info(), clock=VersionClock(),
                   tuning=tuning or GossipTuning.lan(), rng=random.Random(m.index))
            for m in members
        ]
        self.index = {parse_address(m.node_info().gossip or ""): m.index for m in members}
        self.drop: Drop = lambda src, dst, data: False
        self.sent: list[tuple[int, int, bytes]] = []
        for engine in self.engines:
            engine.start(self.now, self.wall_ms)

    @property
    def wall_ms(self) -> int:
        return WALL_MS + int(self.now * 1000)

    def address(self, i: int) -> tuple[str, int]:
        return next(a for a, j in self.index.items() if j == i)

    def flush(self, rounds: int = 50) -> None:
        """Deliver until quiet (bounded); run any push-pull the engines ask for."""
        for _ in range(rounds):
            moved = False
            for i, engine in enumerate(self.engines):
                for data, addr in engine.datagrams_to_send():
                    moved = True
                    j = self.index[addr]
                    self.sent.append((i, j, data))
                    if not self.drop(i, j, data):
                        self.engines[j].receive_datagram(data, self.address(i), self.now,
                                                         self.wall_ms)
                for peer, addr in engine.syncs_to_start():
                    moved = True
                    j = self.index[addr]
                    if not (self.drop(i, j, b"") or self.drop(j, i, b"")):  # a stream needs both ways
                        self.sync(i, j, peer)
            if not moved:
                return

    def sync(self, i: int, j: int, peer: bytes) -> None:
        session, frame = self.engines[i].open_sync(peer)
        other = self.engines[j].accept_sync()
        frames, turn = [frame], 1
        for _ in range(8):
            if not frames:
                break
            receiver = other if turn else session
            frames = [out for f in frames for out in receiver.receive(f, self.now, self.wall_ms)]
            turn ^= 1
        assert session.done and other.done

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move virtual time, firing due timers and delivering as we go."""
        for _ in range(int(seconds / step)):
            self.now += step
            for engine in self.engines:
                if engine.next_deadline() <= self.now:
                    engine.handle_timer(self.now, self.wall_ms)
            self.flush()

    def join_all(self) -> None:
        for engine in self.engines[1:]:
            engine.join([self.address(0)], self.now, self.wall_ms)
        self.flush()
        self.advance(1.0)

    def events(self, i: int) -> list[object]:
        out = []
        while (event := self.engines[i].next_event()) is not None:
            out.append(event)
        return out

    def state(self, i: int, j: int) -> str:
        return self.engines[i].members[self.engines[j].node_id].state


@pytest.fixture
def trio() -> Router:
    _, members = make_cluster(3)
    router = Router(members)
    router.join_all()
    return router


def test_join_through_a_seed_gives_everyone_everyone_and_one_table(trio: Router) -> None:
    for i in range(3):
        assert {m.state for m in trio.engines[i].members.values()} == {ALIVE}
        assert len(trio.engines[i].members) == 2
    assert len({e.table.table_hash for e in trio.engines}) == 1
    assert any(isinstance(e, MemberJoined) for e in trio.events(2))


def test_probes_keep_healthy_members_alive_without_suspicion(trio: Router) -> None:
    trio.events(0)
    trio.advance(20.0)
    assert not [e for e in trio.events(0) if isinstance(e, MemberSuspected)]
    assert all(trio.state(0, j) == ALIVE for j in (1, 2))


def test_an_unreachable_member_is_suspected_then_declared_dead(trio: Router) -> None:
    trio.drop = lambda src, dst, data: 2 in (src, dst)
    tuning = trio.engines[0].tuning
    bound = (tuning.probe_interval_s * 2 + tuning.probe_timeout_s + tuning.indirect_timeout_s
             + suspicion_max_s(tuning.suspicion_mult, 3, tuning.probe_interval_s))
    trio.advance(bound + 1.0)
    assert trio.state(0, 2) == DEAD and trio.state(1, 2) == DEAD
    assert trio.state(0, 1) == ALIVE


def test_a_suspected_member_refutes_with_a_newer_record(trio: Router) -> None:
    victim = trio.engines[2]
    incarnation = node_of(victim.table, victim.node_id).version
    claim = Claim.make(trio.engines[0].key, victim.node_id, incarnation, CLAIM_SUSPECT,
                       trio.wall_ms)
    trio.engines[0]._apply_claim(claim)
    trio.engines[0]._spread_claim(claim, direct_to=trio.engines[0].members[victim.node_id])
    assert trio.state(0, 2) == SUSPECT
    trio.flush()
    assert node_of(victim.table, victim.node_id).version > incarnation
    assert trio.state(0, 2) == ALIVE and trio.state(1, 2) == ALIVE
    assert any(isinstance(e, MemberAlive) for e in trio.events(0))


def test_a_lone_accuser_waits_the_long_timeout_and_confirmations_shorten_it() -> None:
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    observer = router.engines[0]
    subject = router.engines[5]
    inc = node_of(subject.table, subject.node_id).version
    tuning = observer.tuning
    long_s = suspicion_max_s(tuning.suspicion_mult, observer.alive_count, tuning.probe_interval_s)
    observer._apply_claim(Claim.make(router.engines[1].key, subject.node_id, inc, CLAIM_SUSPECT,
                                     router.wall_ms))
    suspicion = observer.members[subject.node_id].suspicion
    assert suspicion is not None
    assert suspicion.deadline - observer._now == pytest.approx(long_s)
    for accuser in (2, 3):
        observer._apply_claim(Claim.make(router.engines[accuser].key, subject.node_id, inc,
                                         CLAIM_DEAD, router.wall_ms))
    assert suspicion.deadline - observer._now == pytest.approx(tuning.suspicion_min_s)


@pytest.mark.parametrize(("age_ms", "counted_s"), [(200, 0.2), (60_000 - 1, None), (-500, 0.0)])
def test_a_suspicion_runs_from_when_it_was_claimed_backdated_at_most_the_floor(
        age_ms: int, counted_s: float | None) -> None:
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    observer, subject = router.engines[0], router.engines[5]
    inc = node_of(subject.table, subject.node_id).version
    observer._apply_claim(Claim.make(router.engines[1].key, subject.node_id, inc, CLAIM_SUSPECT,
                                     observer._wall_ms - age_ms))
    suspicion = observer.members[subject.node_id].suspicion
    assert suspicion is not None
    floor = observer.tuning.suspicion_min_s
    assert observer._now - suspicion.started == pytest.approx(
        floor if counted_s is None else counted_s)   # a claim from the future counts from now


def test_a_verification_probe_asks_helpers_at_once() -> None:
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    verifier, subject = router.engines[0], router.engines[5]
    verifier.datagrams_to_send()
    verifier._start_probe(verifier.members[subject.node_id], verify=True)
    sent = _types(verifier.datagrams_to_send())
    assert sent.count(MsgType.PING) == 1
    assert sent.count(MsgType.PING_REQ) == verifier.tuning.indirect_checks
    (probe,) = verifier._probes.values()
    assert probe.indirect and probe.deadline - verifier._now == pytest.approx(
        verifier.tuning.indirect_timeout_s)


def test_repeated_claims_by_one_accuser_count_once() -> None:
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    observer, subject = router.engines[0], router.engines[5]
    inc = node_of(subject.table, subject.node_id).version
    for _ in range(5):
        claim = Claim.make(router.engines[1].key, subject.node_id, inc, CLAIM_DEAD, router.wall_ms)
        observer._apply_claim(claim)
    suspicion = observer.members[subject.node_id].suspicion
    assert suspicion is not None and len(suspicion.claimants) == 1


def test_leaving_before_the_seed_answered_still_tells_the_seed() -> None:
    _, members = make_cluster(2)
    router = Router(members)
    seed, joiner = router.engines
    joiner.join([router.address(0)], router.now, router.wall_ms)
    ((hello, _),) = joiner.datagrams_to_send()
    seed.receive_datagram(hello, router.address(1), router.now, router.wall_ms)
    seed.datagrams_to_send()                 # its answer is still on its way when we leave
    assert router.state(0, 1) == ALIVE
    joiner.leave(router.now, router.wall_ms)
    router.flush()
    assert router.state(0, 1) == LEFT


def test_leave_is_seen_as_left_not_dead(trio: Router) -> None:
    trio.engines[2].leave(trio.now, trio.wall_ms)
    trio.flush()
    assert trio.state(0, 2) == LEFT and trio.state(1, 2) == LEFT
    assert any(isinstance(e, MemberLeft) for e in trio.events(0))
    trio.advance(10.0)
    assert trio.state(0, 2) == LEFT


def test_tags_change_reaches_every_member(trio: Router) -> None:
    trio.events(1)
    trio.engines[0].set_tags({"role": "db"}, trio.now, trio.wall_ms)
    trio.flush()
    record = node_of(trio.engines[1].table, trio.engines[0].node_id)
    assert isinstance(record.info, NodeInfo) and record.info.tags == {"role": "db"}
    assert any(isinstance(e, MemberUpdated) and e.tags == {"role": "db"} for e in trio.events(1))


def _b_ahead_of_a() -> Router:
    """Three joined engines, where engine 1 holds a tag update of engine 2 that 0 lacks."""
    _, members = make_cluster(3)
    router = Router(members)
    router.join_all()
    a, b = router.engines[0], router.engines[1]
    b.merge_synced(_tag_updates(members[2:3], 10**13), a.node_id, router.now, router.wall_ms)
    return router


def test_what_a_push_pull_brings_is_stamped_with_the_frame_that_brought_it() -> None:
    router = _b_ahead_of_a()
    b = router.engines[1]
    router.events(0)
    router.now += 5.0                        # no timer has run on a since
    router.sync(0, 1, b.node_id)
    updated = [e for e in router.events(0) if isinstance(e, MemberUpdated)]
    assert [e.wall_ms for e in updated] == [router.wall_ms]


def test_equal_tables_sync_in_two_small_frames(trio: Router) -> None:
    a, b = trio.engines[0], trio.engines[1]
    session, first = a.open_sync(b.node_id)
    responder = b.accept_sync()
    replies = responder.receive(first, trio.now, trio.wall_ms)
    assert len(replies) == 1 and session.receive(replies[0], trio.now, trio.wall_ms) == []
    assert session.done and responder.done
    assert len(first) + len(replies[0]) < 200


def test_peek_records_shows_a_deltas_records_without_merging_them() -> None:
    trio = _b_ahead_of_a()
    a, b = trio.engines[0], trio.engines[1]
    session, first = a.open_sync(b.node_id)
    responder = b.accept_sync()
    assert responder.peek_records(first) == []                 # a hash: nothing to verify
    (digest,) = responder.receive(first, trio.now, trio.wall_ms)
    (delta,) = session.receive(digest, trio.now, trio.wall_ms)
    (last,) = responder.receive(delta, trio.now, trio.wall_ms)
    before = a.table.table_hash
    peeked = session.peek_records(last)
    assert len(peeked) == 1 and a.table.table_hash == before and not session.done
    assert session.receive(last, trio.now, trio.wall_ms) == [] and a.table.table_hash != before


def _sealed_ping(router: Router, i: int, j: int) -> bytes:
    engine = router.engines[i]
    engine._send(engine.members[router.engines[j].node_id], MsgType.PING, {"n": 1})
    ((data, _),) = engine.datagrams_to_send()
    return data


def test_a_flipped_bit_fails_the_mac_and_is_counted(trio: Router) -> None:
    data = bytearray(_sealed_ping(trio, 0, 1))
    data[-3] ^= 0x01
    trio.engines[1].receive_datagram(bytes(data), trio.address(0), trio.now, trio.wall_ms)
    assert trio.engines[1].stats.dropped["bad_signature"] == 1
    assert trio.engines[1].datagrams_to_send() == []


def _types(datagrams: list[tuple[bytes, tuple[str, int]]]) -> list[MsgType]:
    return [wire.decode_datagram_prefix(data)[0].type for data, _ in datagrams]


def test_a_replayed_datagram_is_dropped(trio: Router) -> None:
    data = _sealed_ping(trio, 0, 1)
    receiver = trio.engines[1]
    receiver.receive_datagram(data, trio.address(0), trio.now, trio.wall_ms)
    assert _types(receiver.datagrams_to_send()).count(MsgType.ACK) == 1
    receiver.receive_datagram(data, trio.address(0), trio.now, trio.wall_ms)
    assert receiver.datagrams_to_send() == []
    assert receiver.stats.dropped["stale_version"] == 1


def test_a_datagram_from_a_stranger_is_dropped_before_any_work() -> None:
    router, known, stranger = _stranger_pair()
    stranger._send(stranger.members[known.node_id], MsgType.PING, {"n": 1}, [])
    ((data, _),) = stranger.datagrams_to_send()
    known.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert known.stats.dropped["unknown_sender"] == 1
    assert known.datagrams_to_send() == []


def test_a_probe_introduces_us_to_a_member_that_never_answered() -> None:
    router, known, stranger = _stranger_pair()
    data = _sealed_ping(router, 1, 0)
    known.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert known.stats.dropped["unknown_sender"] == 0
    assert known.members[stranger.node_id].state == ALIVE
    answer = known.datagrams_to_send()
    assert _types(answer) == [MsgType.ACK]
    stranger.receive_datagram(answer[0][0], router.address(0), router.now, router.wall_ms)
    assert stranger.knows_us(known.node_id)
    again = _sealed_ping(router, 1, 0)
    assert len(again) < len(data) - 300            # it answered: no introduction any more
    known.set_tags({"restarted": "maybe"}, router.now, router.wall_ms)
    for update, _ in known.datagrams_to_send():
        stranger.receive_datagram(update, router.address(0), router.now, router.wall_ms)
    assert not stranger.knows_us(known.node_id)   # its new record: introduce us again


def test_once_its_table_settled_a_node_probes_without_an_introduction() -> None:
    router, known, stranger = _stranger_pair()
    quiet_s = (UNSETTLED_PROBES + 1) * stranger.tuning.probe_interval_s
    member = stranger.members[known.node_id]
    assert stranger._introduction(member, MsgType.PING)[0]
    stranger._tick(stranger._now + quiet_s, router.wall_ms + int(quiet_s * 1000))
    assert not stranger.knows_us(known.node_id)
    assert stranger._introduction(member, MsgType.PING)[0] == []


def test_an_introduction_does_not_lend_its_address_to_a_forger() -> None:
    router, known, stranger = _stranger_pair()
    honest = _sealed_ping(router, 1, 0)
    forged = honest[:-MAC_BYTES] + bytes(MAC_BYTES)
    known.receive_datagram(forged, router.address(1), router.now, router.wall_ms)
    assert known.datagrams_to_send() == []
    assert known.stats.dropped["bad_signature"] == 1


def _stranger_pair() -> tuple[Router, Gossip, Gossip]:
    """Two engines where the second knows the first, but not the other way round."""
    _, members = make_cluster(2)
    router = Router(members)
    known, stranger = router.engines
    stranger._merge([node_of(known.table, known.node_id).to_wire()], eager=False)
    stranger.datagrams_to_send()
    return router, known, stranger


def _hello(router: Router, i: int) -> bytes:
    engine = router.engines[i]
    engine.join([router.address(0)], router.now, router.wall_ms)
    ((data, _),) = engine.datagrams_to_send()
    return data


def test_a_replayed_hello_is_dropped_and_gets_no_answer() -> None:
    _, members = make_cluster(2)
    router = Router(members)
    data = _hello(router, 1)
    seed = router.engines[0]
    seed.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert [wire.decode_message(d).type for d, _ in seed.datagrams_to_send()][-1] == MsgType.HELLO_REPLY
    seed.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert seed.datagrams_to_send() == []
    assert seed.stats.dropped["stale_version"] == 1


def test_a_stale_hello_is_dropped() -> None:
    _, members = make_cluster(2)
    router = Router(members)
    data = _hello(router, 1)
    seed = router.engines[0]
    late = router.now + seed.tuning.hello_skew_s + 5
    seed.receive_datagram(data, router.address(1), late, WALL_MS + int(late * 1000))
    assert seed.datagrams_to_send() == []
    assert seed.stats.dropped["stale_version"] == 1
    assert len(seed.members) == 0


def test_a_hello_from_another_clusters_node_is_refused() -> None:
    _, members = make_cluster(1)
    other_ca = make_ca("other")
    outsider = make_member(other_ca, 1)
    router = Router([members[0], outsider])
    data = _hello(router, 1)
    seed = router.engines[0]
    seed.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert seed.datagrams_to_send() == []
    assert seed.stats.dropped["unknown_ca"] == 1
    assert len(seed.members) == 0


def test_hellos_are_rate_limited_per_source_address() -> None:
    _, members = make_cluster(2)
    router = Router(members)
    seed = router.engines[0]
    for _ in range(100):
        seed.receive_datagram(b"\x94\x01\x01", ("10.99.0.2", 7946), router.now, router.wall_ms)
    data = _hello(router, 1)
    for _ in range(60):
        seed.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert seed.stats.dropped["rate_limited"] > 0


def test_a_restarted_node_outbids_rumours_of_its_death(trio: Router) -> None:
    trio.drop = lambda src, dst, data: 2 in (src, dst)
    trio.advance(12.0)
    assert trio.state(0, 2) == DEAD
    old = trio.engines[2]
    _, members = make_cluster(3)
    reborn = Gossip(key=old.key, table=members[2].ca.table(), info=old.info,
                    clock=VersionClock(old.clock.last), tuning=old.tuning, rng=random.Random(9))
    trio.engines[2] = reborn
    trio.drop = lambda src, dst, data: False
    reborn.start(trio.now, trio.wall_ms)
    reborn.join([trio.address(0)], trio.now, trio.wall_ms)
    trio.flush()
    trio.advance(2.0)
    assert trio.state(0, 2) == ALIVE and trio.state(1, 2) == ALIVE


def test_signed_records_from_a_stranger_still_get_in() -> None:
    _, members = make_cluster(3)
    router = Router(members)
    known, stranger, third = router.engines
    stranger._merge([node_of(e.table, e.node_id).to_wire() for e in (known, third)], eager=False)
    stranger.datagrams_to_send()
    stranger._send(stranger.members[known.node_id], MsgType.GOSSIP, {},
                   [[0, node_of(third.table, third.node_id).to_wire()]])
    ((data, _),) = stranger.datagrams_to_send()
    known.receive_datagram(data, router.address(1), router.now, router.wall_ms)
    assert known.stats.dropped["unknown_sender"] == 1
    assert third.node_id in known.members          # its signed record got in
    assert stranger.node_id not in known.members


# --- dissemination under load, anti-entropy, wake-ups ------------------------------------


def _gossip_to(router: Router, i: int) -> list[bytes]:
    """Datagrams engine `i` has queued, GOSSIP ones only (probes may go out beside them)."""
    return [data for data, _ in router.engines[i].datagrams_to_send()
            if wire.decode_datagram_prefix(data)[0].type == MsgType.GOSSIP]


def _tag_updates(members: list[Member], version: int) -> list[list[object]]:
    return [m.node_record(version, wall_ms=WALL_MS, tags={"v": str(version)}) for m in members]


def test_updates_one_merge_brings_are_pushed_together() -> None:
    _, members = make_cluster(8)
    router = Router(members)
    router.join_all()
    router.advance(5.0)                      # the join's piggyback queues have drained
    receiver = router.engines[0]
    receiver.datagrams_to_send()
    receiver._merge(_tag_updates(members[1:3], 10**13), eager=True)   # two fit a datagram
    pushed = _gossip_to(router, 0)
    assert len(pushed) == eager_fanout(receiver.tuning.fanout, 8)   # not one per record
    assert all(len(wire.decode_datagram_prefix(d)[0].body["p"]) == 2 for d in pushed)


#: A cap on our own pushes small enough to test with a cluster of 24 (the default is 128).
CAPPED = dataclasses.replace(GossipTuning.lan(), own_push_max=16)


def test_own_update_goes_at_once_to_at_most_own_push_max_members() -> None:
    _, members = make_cluster(24)
    router = Router(members, CAPPED)
    router.join_all()
    router.advance(5.0)
    origin = router.engines[0]
    origin.datagrams_to_send()
    origin.set_tags({"role": "db"}, router.now, router.wall_ms)
    assert len(_gossip_to(router, 0)) == CAPPED.own_push_max


@pytest.mark.parametrize("n", [12, 24])
def test_a_record_its_origin_pushed_to_everyone_is_piggybacked_not_relayed(n: int) -> None:
    _, members = make_cluster(n)
    router = Router(members, CAPPED)
    router.join_all()
    router.advance(5.0)
    origin = router.engines[0]
    origin.set_tags({"role": "db"}, router.now, router.wall_ms)
    data, addr = next((d, a) for d, a in origin.datagrams_to_send()
                      if wire.decode_datagram_prefix(d)[0].type == MsgType.GOSSIP)
    j = router.index[addr]
    receiver = router.engines[j]
    receiver.datagrams_to_send()
    queued = receiver.queued_broadcasts
    receiver.receive_datagram(data, router.address(0), router.now, router.wall_ms)
    record = receiver.table.node(origin.node_id)
    assert record is not None and isinstance(record.info, NodeInfo)
    assert record.info.tags == {"role": "db"}
    assert receiver.queued_broadcasts == queued + 1
    relayed = len(_gossip_to(router, j))
    # 23 others are more than the origin's push reaches: those it reached relay it on.
    assert relayed == (0 if n - 1 <= CAPPED.own_push_max else eager_fanout(CAPPED.fanout, n))


def test_a_busy_queue_stops_eager_pushes_and_starts_a_catch_up_sync() -> None:
    _, members = make_cluster(12)
    router = Router(members)
    router.join_all()
    receiver = router.engines[0]
    receiver._merge(_tag_updates(members[1:1 + EAGER_QUEUE_LIMIT], 10**13), eager=True)
    receiver.datagrams_to_send()
    receiver.syncs_to_start()
    receiver._catch_up_at = 0.0
    queued = receiver.queued_broadcasts
    receiver._merge(_tag_updates(members[10:11], 10**13), eager=True)
    assert _gossip_to(router, 0) == []
    assert receiver.queued_broadcasts == queued           # nor relayed later, ~3 a datagram
    assert len(receiver.syncs_to_start()) == 1
    own = node_of(receiver.table, receiver.node_id)
    receiver.set_tags({"mine": "always pushed"}, router.now, router.wall_ms)
    assert len(_gossip_to(router, 0)) == 11                 # every other member, at once
    assert node_of(receiver.table, receiver.node_id).version > own.version


def test_periodic_anti_entropy_is_a_hash_on_a_ping_and_a_stream_only_if_tables_differ(
        trio: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    trio.advance(2 * PERIOD)                 # joiners' settling syncs are over
    streams: list[tuple[int, int]] = []
    monkeypatch.setattr(trio, "sync", lambda i, j, peer: streams.append((i, j)))
    start = len(trio.sent)
    trio.advance(22.0)                       # past every engine's push-pull time
    hashes = [(i, wire.decode_datagram_prefix(data)[0].body["h"])
              for i, _, data in trio.sent[start:]
              if wire.decode_datagram_prefix(data)[0].type == MsgType.PING
              and "h" in wire.decode_datagram_prefix(data)[0].body]
    assert sorted({i for i, _ in hashes}) == [0, 1, 2]
    assert {h for _, h in hashes} == {trio.engines[0].table.table_hash[:16]}
    assert streams == []                     # equal tables: no stream at all

    a, b = trio.engines[0], trio.engines[1]
    b.set_tags({"only": "b knows"}, trio.now, trio.wall_ms)
    b.datagrams_to_send()                    # lost: a never hears of it
    b._send(b.members[a.node_id], MsgType.PING, {"n": 99, "h": b.table.table_hash[:16]}, [])
    a._catch_up_at = 0.0
    for data, _ in b.datagrams_to_send():
        a.receive_datagram(data, trio.address(1), trio.now, trio.wall_ms)
    assert a.syncs_to_start() == [(b.node_id, a.members[b.node_id].address)]


def test_every_node_probes_once_a_round_at_its_start() -> None:
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    router.advance(3.0)
    per_round: dict[tuple[int, int], int] = {}
    step_ms = 50
    for _ in range(10 * PERIOD_MS // step_ms):   # 10 rounds
        start = len(router.sent)
        router.advance(step_ms / 1000, step=step_ms / 1000)
        for i, _, data in router.sent[start:]:
            if wire.decode_datagram_prefix(data)[0].type == MsgType.PING:
                round_no, phase_ms = divmod(router.wall_ms, PERIOD_MS)
                assert phase_ms <= PROBE_SPREAD * PERIOD_MS + step_ms   # (the router's step)
                per_round[(i, round_no)] = per_round.get((i, round_no), 0) + 1
    assert set(per_round.values()) == {1}
    assert len(per_round) >= 6 * 9


def test_with_dead_members_every_live_member_still_has_one_prober_a_round() -> None:
    _, members = make_cluster(9)
    router = Router(members)
    router.join_all()
    dead = [e.node_id for e in router.engines[4:8]]
    live = [e for e in router.engines if e.node_id not in dead]
    for engine in live:
        for node_id in dead:
            engine._set_state(engine.members[node_id], DEAD, MemberDied, None)
    for round_no in range(20):
        targets = []
        for e in live:
            target = e._next_target(WALL_MS + round_no * 1000)
            assert target is not None   # five live members: each has someone to probe
            targets.append(target.node_id)
        assert sorted(targets) == sorted(e.node_id for e in live)


def test_an_update_after_a_quiet_spell_does_not_read_as_a_late_timer() -> None:
    """The gossip-round timer sleeps while the queue is empty; the first update must
    re-arm it, not look like a round missed long ago (Lifeguard would slow us down)."""
    _, members = make_cluster(5)
    router = Router(members)
    router.join_all()
    router.advance(40.0)                     # queues drained long ago
    assert all(e.queued_broadcasts == 0 and e.awareness == 0 for e in router.engines)
    router.engines[1].set_tags({"after": "quiet"}, router.now, router.wall_ms)
    router.flush()
    router.advance(0.5)
    assert [e.awareness for e in router.engines] == [0] * 5


def test_a_node_in_poor_health_still_probes_every_round() -> None:
    """Its ring targets have no other prober this round; its patience is in its timeouts."""
    _, members = make_cluster(6)
    router = Router(members)
    router.join_all()
    router.advance(3.0)
    router.engines[2].awareness = 3
    rounds = set()
    for _ in range(3 * PERIOD_MS // 50):     # 3 rounds
        start = len(router.sent)
        router.advance(0.05)
        rounds |= {router.wall_ms // PERIOD_MS for i, _, data in router.sent[start:]
                   if i == 2 and wire.decode_datagram_prefix(data)[0].type == MsgType.PING}
    assert len(rounds) == 3


def test_a_probe_goes_early_on_a_wake_up_and_the_probe_rate_stays() -> None:
    _, members = make_cluster(5)
    router = Router(members)
    router.join_all()
    start = len(router.sent)
    router.advance(60 * PERIOD)
    pings = [(i, data) for i, _, data in router.sent[start:]
             if wire.decode_datagram_prefix(data)[0].type == MsgType.PING]
    for i in range(5):
        assert 58 <= sum(1 for sender, _ in pings if sender == i) <= 61


def test_a_joiner_syncs_again_soon_after_its_join_sync_first_with_its_seed() -> None:
    _, members = make_cluster(6)
    router = Router(members)
    for engine in router.engines[1:5]:
        engine.join([router.address(0)], router.now, router.wall_ms)
    router.flush()
    joiner, seed = router.engines[5], router.engines[0]
    joiner.join([router.address(0)], router.now, router.wall_ms)
    router.flush()
    start = router.now
    step = 1 / 64                            # a deadline is handled at most one step late
    times, peers = [], []
    for _ in range(int(2 * PERIOD / step)):
        router.now += step
        if joiner.next_deadline() <= router.now:
            joiner.handle_timer(router.now, router.wall_ms)
        for peer, _ in joiner.syncs_to_start():
            times.append(router.now - start)
            peers.append(peer)
    expected = list(itertools.accumulate(gap * PERIOD for gap in JOIN_SETTLE_GAPS))
    assert times == pytest.approx(expected, abs=step)
    assert peers[0] == seed.node_id          # in a join storm the seed heard every hello


def _pings_with_hash(router: Router, start: int) -> list[int]:
    """Senders of the pings since `start` that carried a table hash."""
    out = []
    for i, _, data in router.sent[start:]:
        msg = wire.decode_datagram_prefix(data)[0]
        if msg.type == MsgType.PING and "h" in msg.body:
            out.append(i)
    return out


def test_for_a_while_after_a_change_every_ping_carries_the_hash(trio: Router) -> None:
    trio.advance((UNSETTLED_PROBES + 2) * PERIOD)   # the join's changes are old enough
    for engine in trio.engines:
        engine._push_pull_at = trio.now + 100 * PERIOD   # keep the periodic check out of the way
    start = len(trio.sent)
    trio.advance(5 * PERIOD)
    assert _pings_with_hash(trio, start) == []    # settled: pings are bare
    trio.engines[0].set_tags({"new": "tag"}, trio.now, trio.wall_ms)
    start = len(trio.sent)
    trio.advance(5 * PERIOD)
    senders = _pings_with_hash(trio, start)
    assert sorted(set(senders)) == [0, 1, 2] and len(senders) >= 12
    trio.advance(6 * PERIOD)
    start = len(trio.sent)
    trio.advance(5 * PERIOD)
    assert _pings_with_hash(trio, start) == []    # settled again


def test_a_timer_handled_late_lowers_our_own_health(trio: Router) -> None:
    engine = trio.engines[0]
    due = engine.next_deadline()
    assert engine.awareness == 0
    engine.handle_timer(due + 0.01, trio.wall_ms)          # on time: no change
    assert engine.awareness == 0
    due = engine.next_deadline()
    engine.handle_timer(due + 0.5, trio.wall_ms)           # starved for half a second
    assert engine.awareness == 1
