"""The gossip engine: SWIM + Lifeguard membership and dissemination (sans-IO).

The shell feeds it datagrams (`receive_datagram`), stream frames (through
`SyncSession`s it hands out) and timer ticks (`handle_timer`), each with the
monotonic `now` and the wall-clock `wall_ms`; it reads back datagrams to send,
streams to open and events. There is one deadline (`next_deadline`), as in
aioquic, and all randomness comes from the injected `rng`.

Liveness rules (docs/protocol.md, "Gossip"):
- A member is alive when the table holds its signed node record; its
  incarnation is that record's version. Only the member can outbid a claim
  against it, by publishing a newer record: nobody can declare another alive.
- Suspect and dead claims are signed by their claimant and count once per
  claimant. A suspicion times out after Lifeguard's shrinking timeout, which
  reaches its floor only after `confirmations` independent claimants agree; a
  lone (perhaps malicious) accuser waits the long timeout, long enough for the
  subject to hear and refute.
- A fresh suspicion makes a few members re-probe the suspect at once
  (`verify_probes`), so a truly dead node collects its confirmations within a
  probe timeout instead of a probe period: that is what halves detection time.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Iterable, Mapping

import nacl.signing

from meshd import wire
from meshd.errors import (
    MeshdError, RemoteError, StaleError, UsageError, WireError,
)
from meshd.gossip.auth import MAC_BYTES, PairwiseAuth
from meshd.gossip.broadcast import BroadcastQueue
from meshd.gossip.claims import CLAIM_DEAD, CLAIM_SUSPECT, CLAIM_TTL_MS, Claim, Suspicion
from meshd.gossip.events import (
    ALIVE, DEAD, LEFT, SUSPECT, MemberAlive, MemberDied, MemberEvent, MemberJoined, MemberLeft,
    MemberReaped, MemberSuspected, MemberUpdated, RecordsMerged,
)
from meshd.gossip.hello import Hellos
from meshd.gossip.sync import SyncSession
from meshd.gossip.tuning import (
    GossipTuning, eager_fanout, own_fanout, remaining_suspicion_s, retransmit_limit,
    scaled_timeout, suspicion_max_s,
)
from meshd.identity import verify
from meshd.records import KIND_NODE, NODE_KEY, NodeInfo
from meshd.table import Change, Digest, MergeResult, Record, Table, VersionClock
from meshd.wire import Domain, Fields, MsgType

Address = tuple[str, int]

ITEM_RECORD = 0
ITEM_CLAIM = 1
MAX_ITEMS_PER_DATAGRAM = 32
MAX_EVENTS = 10_000
MAX_OUTBOX = 4_096
MAX_PENDING_SYNCS = 64
CATCH_UP_S = 1.0
# An update is pushed at once and queued for piggybacking only while fewer updates than
# this wait (our own always are). A busy queue means many updates at once, a join storm:
# relaying every record fanout times at once and λ·log(N) times more in gossip rounds
# would keep each node's queue full for tens of seconds, ~3 records a datagram, and their
# CPU saturated. A push-pull (`_catch_up`, the settling syncs, the hash on pings) carries
# them in bulk instead, each record once per node.
EAGER_QUEUE_LIMIT = 8
# After a join, push-pulls at these multiples of the probe interval apart, then the
# profile's interval: a joiner's first sync (with its seed) brings only who joined before
# it, and in a join storm the rest would otherwise trickle in by piggyback, ~3 records a
# datagram. The first also retries a join sync the seed refused (too many at once). It
# comes soon (0.2 s on lan): a storm's hellos reach the seed within tens of ms, and an
# early joiner that waited 0.5 s for the rest made a quarter of 25-agent joins take 0.5 s
# instead of 0.15-0.2 (12 joins each way; no change at N=50 or N=100, which are CPU-bound).
JOIN_SETTLE_GAPS = (0.1, 0.5, 1.0)
# A timer handled this late counts against our own health, like a missed nack (Lifeguard).
LATE_TIMER_S = 0.1
# Every node probes at the start of each wall-clock round, within this fraction of the
# interval (a per-node offset, so N nodes do not fire at one instant). A member is then
# probed once a round at the same phase: a crash waits at most one interval for its
# first probe (with a random phase per prober, up to two). And the datagrams of a round
# arrive together, so a node handles its probe, its prober's ping and its ack in about
# one wake-up: an idle node's CPU is its wake-ups (see meshd/pump.py).
PROBE_SPREAD = 0.05
# Bytes of the table hash a ping carries once per push-pull interval: a peer whose table
# differs opens the push-pull; equal tables cost these bytes and no stream at all.
HASH_CHECK_BYTES = 16
# For this many probe intervals after its table last changed, every ping of a node carries
# the hash: after a join storm a node that missed a record finds out from its next probe
# target, not at the next push-pull interval. A settled table pays nothing.
UNSETTLED_PROBES = 10
ENVELOPE_OVERHEAD = 64 + MAC_BYTES
LIVE_STATES = (ALIVE, SUSPECT)
# Expected members that, on first hearing a claim, also send it to its subject: its
# refutation must not hinge on gossip luck when queues are busy (many suspicions at once).
SUSPECT_TOLD_BY = 16
PIGGYBACK_BUDGET = wire.MAX_DATAGRAM_BYTES - ENVELOPE_OVERHEAD - 32


def parse_address(text: str) -> Address:
    """`host:port` or `[v6]:port` (already validated where it came from)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def default_address(info: NodeInfo) -> Address | None:
    """Membership-only mode gossips on the address the node advertises."""
    return parse_address(info.gossip) if info.gossip else None


@dataclass(frozen=True, slots=True)
class Member:
    """The engine's local liveness view of one node (its facts live in the table).

    Never changed, only replaced: a view the shell reads stays as it was, and engines
    may share members (the simulator's steady start gives thousands one set).
    """

    node_id: bytes
    name: str
    incarnation: int
    address: Address | None
    state: str = ALIVE
    since: float = 0.0
    suspicion: Suspicion | None = None


@dataclass(slots=True)
class Probe:
    """A probe we started (`relay_for` set when we probe on another member's behalf)."""

    target: bytes
    number: int
    deadline: float
    indirect: bool = False
    verify: bool = False
    relay_for: tuple[bytes, int, Address] | None = None
    nacks_expected: int = 0
    nacks: int = 0


@dataclass(slots=True)
class Stats:
    """Counters for metrics, the simulator and the benchmarks."""

    sent_datagrams: int = 0
    sent_bytes: int = 0
    received_datagrams: int = 0
    received_bytes: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)


class Gossip:
    """One node's membership protocol. All I/O is the caller's."""

    def __init__(self, *, key: nacl.signing.SigningKey, table: Table, info: NodeInfo,
                 clock: VersionClock, tuning: GossipTuning, rng: random.Random,
                 address_of: Callable[[NodeInfo], Address | None] = default_address) -> None:
        self.key = key
        self.node_id = bytes(key.verify_key)
        self.table = table
        self.info = info
        self.clock = clock
        self.tuning = tuning
        self.rng = rng
        self.address_of = address_of
        self.auth = PairwiseAuth(key, clock.last + 1)
        self.stats = Stats()
        self.members: dict[bytes, Member] = {}
        # Members that sent us an authenticated datagram since their last record: they
        # hold our record, so a probe to them needs no introduction.
        self._heard_from: set[bytes] = set()
        self._live_members = 0          # members alive or suspect (see alive_count)
        # Members that got a suspicion, in order; pruned lazily. Timers read this, not every
        # member: the shell asks for next_deadline after each datagram.
        self._suspects: dict[bytes, None] = {}
        self.awareness = 0
        self._broadcasts = BroadcastQueue()
        self._outbox: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._events: collections.deque[Any] = collections.deque()
        self._syncs: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._probes: dict[int, Probe] = {}
        self._probe_number = 0
        self._ring: list[bytes] = [self.node_id]   # us and members alive or suspect, sorted
        # Datagrams name no sender: its address picks the MAC key (docs/protocol.md).
        self._by_address: dict[Address, bytes] = {}
        self._probe_at = 0.0
        self._probe_offset_ms = 0
        self._gossip_at = 0.0
        self._push_pull_at = 0.0
        self._collect_at = 0.0
        self._seeds: list[Address] = []
        self._hellos = Hellos(key, tuning.hello_skew_s, rng)
        self._join_at: float | None = None
        self._catch_up_at = 0.0
        self._settle_gaps: list[float] = []
        self._seed_answered: bytes | None = None
        self._hash_check = False
        self._changed_at = -math.inf
        self._joined = False
        self._now = 0.0
        self._wall_ms = 0
        self.left = False

    # --- lifecycle -----------------------------------------------------------

    def start(self, now: float, wall_ms: int) -> None:
        """Publish our own node record; timers start from `now`."""
        self._tick(now, wall_ms)
        self._publish_self(replace(self.info, left=False))
        self._start_timers(now)

    def start_formed(self, members: Mapping[bytes, Member], now: float, wall_ms: int) -> None:
        """Start as a member of a cluster that formed already: the table holds our current
        node record and every member's, and `members` is the view of them, all alive
        (ours may be among them; every engine may be given the same one). Nothing is
        published and nobody is greeted: this is where `start` and `join` end once a join
        storm is over, which is how the simulator starts clusters too large to form one
        by one.
        """
        own = self.table.node(self.node_id)
        if own is None or own.info != self.info:
            raise UsageError("start_formed: the table must hold our current node record")
        others = {node_id: m for node_id, m in members.items() if node_id != self.node_id}
        if any(m.state != ALIVE or m.suspicion is not None for m in others.values()):
            raise UsageError("start_formed: a formed cluster's members are all alive")
        self.members = others
        self.clock.last = max(self.clock.last, own.version)   # as if we had published it
        self._tick(now, wall_ms)
        self._live_members = len(self.members)
        self._ring = sorted([self.node_id, *self.members])
        self._by_address = {m.address: node_id for node_id, m in self.members.items()
                            if m.address is not None}
        self._joined = True
        self._start_timers(now)

    def _start_timers(self, now: float) -> None:
        interval_ms = int(self.tuning.probe_interval_s * 1000)
        spread_ms = max(1, int(PROBE_SPREAD * interval_ms))
        self._probe_offset_ms = int.from_bytes(self.node_id[:4], "big") % spread_ms
        self._probe_at = now
        self._schedule_probe(now)
        self._gossip_at = now + self.tuning.gossip_interval_s
        self._push_pull_at = now + self.rng.uniform(0.5, 1.0) * self.tuning.push_pull_interval_s
        self._collect_at = now + 60.0

    def join(self, seeds: Iterable[Address], now: float, wall_ms: int) -> None:
        """Say hello to each seed until one answers (then push-pull with it)."""
        self._tick(now, wall_ms)
        self._seeds = list(seeds)
        self._joined = not self._seeds
        if self._seeds:
            self._send_hellos()

    def set_tags(self, tags: dict[str, str], now: float, wall_ms: int) -> None:
        """Change our tags: a newer signed node record, pushed at once."""
        self._tick(now, wall_ms)
        self._publish_self(replace(self.info, tags=dict(tags)))

    def update_info(self, info: NodeInfo, now: float, wall_ms: int) -> None:
        """Publish a changed self-description (endpoints, subnets, WireGuard key)."""
        self._tick(now, wall_ms)
        self._publish_self(info)

    def leave(self, now: float, wall_ms: int) -> None:
        """Publish a signed `left` record and push it (see `_publish_self`)."""
        self._tick(now, wall_ms)
        self.left = True
        self._publish_self(replace(self.info, left=True))
        if not self._joined:
            # Leaving while a join is in flight: the seed may know us from our hello while
            # we know no member to push to; a hello carries our record, now the `left` one.
            self._send_hellos()

    # --- shell interface -----------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> Any | None:
        return self._events.popleft() if self._events else None

    def has_output(self) -> bool:
        """Events or push-pulls wait for the shell (datagrams aside)."""
        return bool(self._events or self._syncs)

    def syncs_to_start(self) -> list[tuple[bytes, Address]]:
        """Push-pull streams the shell should open: (peer ID, address)."""
        out = list(self._syncs)
        self._syncs.clear()
        return out

    def next_deadline(self) -> float:
        """When `handle_timer` next has work; `math.inf` when never (a node that left).

        The shell asks after every wake-up, so it builds nothing: on an idle node the
        probe and suspicion maps are empty and this is a few comparisons."""
        if self.left:   # only pending probes and suspicions still run out (see handle_timer)
            deadline = math.inf
        else:
            deadline = min(self._probe_at, self._push_pull_at, self._collect_at)
            if self._broadcasts:   # an idle node wakes for probes only
                deadline = min(deadline, self._gossip_at)
            if self._join_at is not None:
                deadline = min(deadline, self._join_at)
        for probe in self._probes.values():
            deadline = min(deadline, probe.deadline)
        if self._suspects:
            for member in self._suspected():
                if member.suspicion:
                    deadline = min(deadline, member.suspicion.deadline)
        return deadline

    def handle_timer(self, now: float, wall_ms: int) -> None:
        """Do whatever is due: probes, probe timeouts, suspicions, gossip, syncs, collection."""
        if now - self.next_deadline() > LATE_TIMER_S:
            # We are starved (CPU, a blocked shell): our own acks may be waiting unread, so
            # we are the likelier culprit of a failed probe. Lifeguard: slow down accusing.
            self.awareness = min(self.tuning.awareness_max, self.awareness + 1)
        self._tick(now, wall_ms)
        for number, probe in list(self._probes.items()):
            if probe.deadline <= now:
                self._probe_expired(number, probe)
        if self._suspects:
            self._end_suspicions(now)
        if self.left:
            return
        self._probe_if_due()
        if self._gossip_at <= now:
            self._gossip_round()
            self._gossip_at = now + self.tuning.gossip_interval_s
        if self._push_pull_at <= now:
            self._push_pull(settling=bool(self._settle_gaps))
            self._settle_gaps = self._settle_gaps[1:]
            self._push_pull_at = now + (self._settle_gaps[0] if self._settle_gaps
                                        else self.tuning.push_pull_interval_s)
        if self._join_at is not None and self._join_at <= now:
            self._send_hellos()
        if self._collect_at <= now:
            self._collect()
            self._collect_at = now + 60.0

    def _end_suspicions(self, now: float) -> None:
        """Declare dead whoever's suspicion ran out, and prune the ended ones."""
        for member in self._suspected():
            if member.suspicion and member.suspicion.deadline <= now:
                self._declare_dead(member)
        self._suspects = {m.node_id: None for m in self._suspected() if m.suspicion}

    def receive_datagram(self, data: bytes, addr: Address, now: float, wall_ms: int) -> None:
        """Handle one datagram; hostile input is counted in `stats.dropped`, never raised."""
        self._tick(now, wall_ms)
        self.stats.received_datagrams += 1
        self.stats.received_bytes += len(data)
        try:
            self._dispatch(data, addr)
        except RemoteError as exc:
            self.stats.dropped[exc.reason] += 1
        except MeshdError as exc:
            self.stats.dropped[type(exc).__name__] += 1

    def open_sync(self, peer: bytes) -> tuple[SyncSession, bytes]:
        """Start a push-pull as initiator: the session and its first frame."""
        return SyncSession.initiate(self, self.auth.seal, self.auth.open, peer)

    def accept_sync(self) -> SyncSession:
        """A session for a stream someone opened to us."""
        return SyncSession(self, self.auth.seal, self.auth.open, None)

    def members_view(self) -> list[Member]:
        return list(self.members.values())

    def knows_us(self, node_id: bytes) -> bool:
        """The member sent us an authenticated datagram since its last record."""
        return node_id in self._heard_from

    @property
    def queued_broadcasts(self) -> int:
        """Updates waiting to be piggybacked (memberlist's queue.broadcasts metric)."""
        return len(self._broadcasts)

    @property
    def alive_count(self) -> int:
        """n for the scale laws: members not known dead or gone, plus ourselves.

        Kept as a counter: every datagram sent reads it, and a scan would make each
        send cost O(members).
        """
        return 1 + self._live_members

    # --- SyncOwner (used by SyncSession) ------------------------------------

    def table_hash(self) -> bytes:
        return self.table.table_hash

    def digest_wire(self) -> dict[str, Any]:
        return self.table.digest_wire()

    def delta_since(self, digest: Digest) -> list[Record]:
        return self.table.delta_since(digest)

    def merge_synced(self, records: list[Any], peer: bytes, now: float, wall_ms: int) -> None:
        self._tick(now, wall_ms)
        self._merge(records, eager=False)

    def claims_against(self, peer: bytes) -> list[Any]:
        """A fresh claim if we hold `peer` suspect or dead, so it can refute."""
        member = self.members.get(peer)
        if member is None or member.state not in (SUSPECT, DEAD):
            return []
        kind = CLAIM_DEAD if member.state == DEAD else CLAIM_SUSPECT
        return [Claim.make(self.key, peer, member.incarnation, kind, self._wall_ms).to_wire()]

    def receive_claims(self, claims: list[Any], peer: bytes, now: float, wall_ms: int) -> None:
        self._tick(now, wall_ms)
        for obj in claims:
            try:
                self._on_claim(obj)
            except RemoteError as exc:
                self.stats.dropped[exc.reason] += 1

    # --- internals: time, publishing, sending ----------------------------------

    def _tick(self, now: float, wall_ms: int) -> None:
        self._now = max(self._now, now)
        self._wall_ms = wall_ms

    def _publish_self(self, info: NodeInfo) -> None:
        """Publish our own record; `_apply_result` pushes it at once, wide."""
        self.info = info
        version = self.clock.next(self._wall_ms)
        result = self.table.publish(self.key, KIND_NODE, NODE_KEY, info, version, self._wall_ms)
        self._apply_result(result, eager=True)

    def _queue_record(self, record: Record) -> tuple[Any, int]:
        """Queue a record for piggybacking; the item and its size, for an eager push."""
        item, size = _record_item(record)
        self._enqueue(record.ident, item, size)
        return item, size

    def _enqueue(self, key: Hashable, item: Any, size: int) -> None:
        """Queue an item for piggybacking. An idle node's gossip-round timer is not armed
        (see `next_deadline`); armed again from now, so an old `_gossip_at` never reads
        as a timer handled late, which would count against our own health."""
        if not len(self._broadcasts):
            self._gossip_at = max(self._gossip_at, self._now + self.tuning.gossip_interval_s)
        self._broadcasts.push(key, item, size)

    def _spread_claim(self, claim: Claim, direct_to: Member | None = None) -> None:
        item, size = [ITEM_CLAIM, claim.to_wire()], len(claim.signed.payload) + 80
        self._enqueue(("claim", claim.claimant, claim.subject), item, size)
        self._eager_push([(item, size)], extra=direct_to)

    def _eager_push(self, sized: list[tuple[Any, int]], wide: bool = False,
                    extra: Member | None = None) -> None:
        """Send fresh updates to `eager_fanout` random members now, not at the next round;
        `wide` (our own records: tags, refutations, leave) to `own_fanout` of them, so the
        first hop is the widest (everyone, in a cluster of up to `own_push_max` others).

        All updates one merge brought travel together, as few datagrams as fit: in a
        join storm a datagram carries several new records, and a push per record would
        multiply every node's datagrams (and their CPU) by that many.
        """
        count = self._own_fanout() if wide else eager_fanout(self.tuning.fanout, self.alive_count)
        targets = self._random_members(count)
        if (extra is not None and extra.address is not None
                and all(m.node_id != extra.node_id for m in targets)):
            targets.append(extra)
        for items in _packed(sized, PIGGYBACK_BUDGET):
            for member in targets:
                self._send(member, MsgType.GOSSIP, {}, items)

    def _random_members(self, k: int, exclude: Iterable[bytes] = ()) -> list[Member]:
        """k distinct live members, uniformly at random.

        Draws from the ID ring and rejects the ineligible, so a pick costs O(k), not
        O(members) (every new update is pushed to fanout members at once); only when
        too few draws succeed (a small or mostly dead cluster) or k asks for about every
        live member (our own updates in a small cluster) does it scan them all.
        """
        skip = set(exclude)
        skip.add(self.node_id)
        if k < self._live_members:
            chosen: dict[bytes, Member] = {}
            for _ in range(4 * k + 8):
                if len(chosen) == k:
                    break
                node_id = self._ring[self.rng.randrange(len(self._ring))]
                member = self.members.get(node_id)
                if member is not None and node_id not in skip and _reachable(member):
                    chosen[node_id] = member
            if len(chosen) == k:
                return list(chosen.values())
        pool = [m for m in self.members.values() if m.node_id not in skip and _reachable(m)]
        return self.rng.sample(pool, min(k, len(pool)))

    def _send(self, member: Member, msg_type: MsgType, body: dict[str, Any],
              items: list[Any] | None = None, address: Address | None = None) -> None:
        """Seal a datagram for `member`, filling spare room with piggybacked updates."""
        addr = address or member.address
        if addr is None:
            return
        body = dict(body, s=self.auth.next_seq(member.node_id))
        if items is None:
            items, room = self._introduction(member, msg_type)
            if self._broadcasts:   # idle, a probe carries nothing: skip the queue's sort
                limit = retransmit_limit(self.tuning.retransmit_mult, self.alive_count)
                items += self._broadcasts.take(room, limit)[:MAX_ITEMS_PER_DATAGRAM - len(items)]
        if items:
            body["p"] = items
        data = self.auth.seal(member.node_id, wire.encode_datagram(msg_type, body))
        self._emit(data, addr)

    def _introduction(self, member: Member, msg_type: MsgType) -> tuple[list[Any], int]:
        """Our node record for a probe to a member not yet heard from while tables are
        still settling (and the room left): it may not know us yet, and would drop a
        probe it cannot authenticate. Once our table has been quiet a while, every
        member holds our record: the first probe of each pair pays nothing then."""
        if (member.node_id in self._heard_from or msg_type not in (MsgType.PING, MsgType.PING_REQ)
                or not self._unsettled()):
            return [], PIGGYBACK_BUDGET
        record = self.table.node(self.node_id)
        if record is None:
            return [], PIGGYBACK_BUDGET
        item, size = _record_item(record)
        return [item], PIGGYBACK_BUDGET - size

    def _unsettled(self) -> bool:
        """Our table changed in the last `UNSETTLED_PROBES` probe intervals."""
        return self._now - self._changed_at < UNSETTLED_PROBES * self.tuning.probe_interval_s

    def _emit(self, data: bytes, addr: Address) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self.stats.dropped["outbox_full"] += 1
            return
        self.stats.sent_datagrams += 1
        self.stats.sent_bytes += len(data)
        self._outbox.append((data, addr))

    def _event(self, event: Any) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.stats.dropped["events_overflow"] += 1
        self._events.append(event)

    # --- receiving -------------------------------------------------------------

    def _dispatch(self, data: bytes, addr: Address) -> None:
        msg, used = wire.decode_datagram_prefix(data)
        if isinstance(msg, wire.Message):
            if used != len(data) or msg.type not in (MsgType.HELLO, MsgType.HELLO_REPLY):
                raise WireError("only hellos carry a full envelope, and no trailer")
            self._on_hello(msg, addr)
            return
        if used + MAC_BYTES != len(data):
            raise WireError("datagram trailer is not a MAC")
        if self.left:
            return
        sender = self._by_address.get(addr)
        member = self.members.get(sender) if sender is not None else None
        if member is None:
            member = self._from_stranger(msg, addr)
            if member is None:
                return
        self.auth.open(member.node_id, data)
        f = Fields(msg.body, _WHAT[msg.type])
        self.auth.accept_seq(member.node_id, f.int("s"))
        self._heard_from.add(member.node_id)
        items = f.list("p", max_len=MAX_ITEMS_PER_DATAGRAM, optional=True)
        if items:
            self._on_items(items, member.node_id if msg.type == MsgType.GOSSIP else None)
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            raise WireError(f"{msg.type.name} is not a datagram message")
        handler(self, member, f, addr)
        self._probe_if_due(PROBE_SPREAD * self.tuning.probe_interval_s)

    def _from_stranger(self, msg: wire.Datagram, addr: Address) -> Member | None:
        """A datagram from an address no member of ours advertises (yet).

        In a join storm a member often hears of us before we hear of it. Without a
        known sender the MAC cannot be checked, so only what is signed on its own
        counts: the records it carries, each verified at its origin, rate-limited
        per source like hellos. A probe to a member that has not yet answered us
        carries our own node record (`_send`): if one of the records introduces the
        sender at this address, it is no stranger any more and the datagram is
        handled as any other (its MAC still decides), so a new member's first
        probes are answered instead of ending in a false suspicion.
        """
        self._hellos.rate_limit(addr[0], self._now)
        items = Fields(msg.body, _WHAT[msg.type]).list(
            "p", max_len=MAX_ITEMS_PER_DATAGRAM, optional=True)
        records = [item[1] for item in items or ()
                   if isinstance(item, list) and len(item) == 2 and item[0] == ITEM_RECORD]
        if records:
            self._merge(records, eager=True)
        sender = self._by_address.get(addr)
        member = self.members.get(sender) if sender is not None else None
        if member is None:
            self.stats.dropped[_UnknownSender.reason] += 1
            self._catch_up()
        return member

    def _catch_up(self, peer: Member | None = None) -> None:
        """Our table lags: someone knows of us whom we do not know, updates arrive faster
        than eager pushes may carry them (a join storm), or `peer`'s table hash differs
        from ours. A push-pull (with `peer`, else a random member) fetches the rest in one
        round trip instead of waiting for piggybacked retransmits; at most one per
        `CATCH_UP_S`, whoever asks."""
        if self._now < self._catch_up_at or len(self._syncs) >= MAX_PENDING_SYNCS:
            return
        self._catch_up_at = self._now + CATCH_UP_S
        for member in [peer] if peer is not None else self._random_members(1):
            if member.address is not None:
                self._syncs.append((member.node_id, member.address))

    def _on_items(self, items: list[Any], pusher: bytes | None = None) -> None:
        """Piggybacked records and claims; `pusher` is the sender of a GOSSIP datagram."""
        records = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in (ITEM_RECORD, ITEM_CLAIM)):
                raise WireError("piggyback item must be [kind, data]")
            if item[0] == ITEM_RECORD:
                records.append(item[1])
            else:
                try:
                    self._on_claim(item[1])
                except RemoteError as exc:
                    self.stats.dropped[exc.reason] += 1
        if records:
            self._merge(records, eager=True, pusher=pusher)

    def _merge(self, records: list[Any], eager: bool, pusher: bytes | None = None) -> MergeResult:
        result = self.table.merge(records, self._wall_ms)
        for reason, count in result.rejected.items():
            self.stats.dropped[reason] += count
        self._apply_result(result, eager, pusher)
        return result

    def _apply_result(self, result: MergeResult, eager: bool, pusher: bytes | None = None
                      ) -> None:
        # What push-pull brought is old news to the cluster (anti-entropy repairs, it
        # does not disseminate): re-gossiping a joiner's whole table would cost every
        # node N records times the retransmit limit.
        news = [change.new for change in result.changes if eager and change.new is not None]
        quiet = len(self._broadcasts) < EAGER_QUEUE_LIMIT
        own = any(record.origin == self.node_id for record in news)
        if news and (quiet or own):
            sized = [self._queue_record(record) for record in news]
            relay = [item for item, record in zip(sized, news, strict=True)
                     if not self._reached_all(record, pusher)]
            if relay:
                self._eager_push(relay, wide=own)
        elif news:
            self._catch_up()
        for change in result.changes:
            self._on_change(change)
        if result.changes:
            self._changed_at = self._now
            self._event(RecordsMerged(tuple(result.changes)))

    def _reached_all(self, record: Record, pusher: bytes | None) -> bool:
        """A record its origin pushed to us itself, in a cluster small enough that its
        origin's push went to every member (`own_fanout`): relaying it at once would only
        repeat what everyone just got, and in a burst that every node pays for. It still
        rides our piggybacks, for a member whose copy was lost."""
        return pusher == record.origin and self._own_fanout() >= self.alive_count - 1

    def _own_fanout(self) -> int:
        return own_fanout(self.tuning.fanout, self.alive_count, self.tuning.own_push_max)

    def _on_change(self, change: Change) -> None:
        new = change.new
        if new is None:
            if change.old is not None and change.old.kind == KIND_NODE:
                self._forget(change.old.origin)
            return
        if new.kind == KIND_NODE and isinstance(new.info, NodeInfo):
            self._on_node_record(new, new.info)

    def _on_node_record(self, record: Record, info: NodeInfo) -> None:
        origin = record.origin
        if origin == self.node_id:
            if record.version > self.clock.last:   # a stale copy of us outlived a restart
                self.clock.last = record.version
                self._publish_self(self.info)
            return
        member = self.members.get(origin)
        address = self.address_of(info)
        self._set_address(origin, member.address if member else None, address)
        if member is None:
            member = Member(origin, info.name, record.version, address, since=self._now)
            self.members[origin] = member
            self._live_members += 1
            bisect.insort(self._ring, origin)
            self._event(MemberJoined(origin, info.name, record.version, wall_ms=self._wall_ms))
        else:
            suspicion = member.suspicion
            if suspicion and record.version > suspicion.incarnation:
                suspicion = None
            member = self.members[origin] = replace(
                member, incarnation=record.version, address=address, name=info.name,
                suspicion=suspicion)
            self._heard_from.discard(origin)    # a new record may be a restart that lost its table
            if member.state in (SUSPECT, DEAD) and not info.left:
                member = self._set_state(member, ALIVE, MemberAlive, suspicion)
            elif not info.left:
                self._event(MemberUpdated(origin, info.name, record.version, info.tags,
                                          wall_ms=self._wall_ms))
        if info.left and member.state != LEFT:
            self._set_state(member, LEFT, MemberLeft, None)

    def _suspected(self) -> list[Member]:
        """Members that may hold a suspicion (some ended since: check `member.suspicion`)."""
        return [m for m in map(self.members.get, self._suspects) if m is not None]

    def _set_state(self, member: Member, state: str, event: type[MemberEvent],
                   suspicion: Suspicion | None) -> Member:
        """Replace the member with one in `state` (and `suspicion`), and say so."""
        was_live, live = member.state in LIVE_STATES, state in LIVE_STATES
        self._live_members += live - was_live
        if live and not was_live:
            bisect.insort(self._ring, member.node_id)
        elif was_live and not live:
            self._ring.pop(bisect.bisect_left(self._ring, member.node_id))
        member = self.members[member.node_id] = replace(member, state=state, since=self._now,
                                                        suspicion=suspicion)
        self._event(event(member.node_id, member.name, member.incarnation, wall_ms=self._wall_ms))
        return member

    def _set_address(self, origin: bytes, old: Address | None, new: Address | None) -> None:
        if old is not None and self._by_address.get(old) == origin:
            del self._by_address[old]
        if new is not None:
            self._by_address[new] = origin

    def _forget(self, origin: bytes) -> None:
        member = self.members.pop(origin, None)
        self._heard_from.discard(origin)
        if member is not None:
            if member.state in LIVE_STATES:
                self._live_members -= 1
                self._ring.pop(bisect.bisect_left(self._ring, origin))
            self._set_address(origin, member.address, None)
            self._event(MemberReaped(origin, member.name, member.incarnation,
                                     wall_ms=self._wall_ms))

    # --- probes ------------------------------------------------------------------

    def _probe_if_due(self, early_s: float = 0.0) -> None:
        """Probe if the next probe is due within `early_s` (a datagram woke us anyway)."""
        due = self._probe_at
        if due - early_s > self._now:
            return
        target = self._next_target(self._wall_ms + round((due - self._now) * 1000))
        if target is not None:
            self._start_probe(target, verify=False)
        self._schedule_probe(due)

    def _schedule_probe(self, due: float) -> None:
        """The next probe: at our offset into the round after the one `due` (or now, if
        later) falls in. Every round, whatever our health: each member has one prober a
        round on the ring, so a prober that skipped rounds (memberlist's scaled interval)
        would leave its targets unprobed; Lifeguard's patience is in the timeouts."""
        interval_ms = int(self.tuning.probe_interval_s * 1000)
        base_ms = self._wall_ms + round((max(due, self._now) - self._now) * 1000)
        next_ms = (base_ms // interval_ms + 1) * interval_ms + self._probe_offset_ms
        self._probe_at = self._now + (next_ms - self._wall_ms) / 1000

    def _next_target(self, due_wall_ms: int) -> Member | None:
        """This round's target: our successor on the ring of live members (and us) at a
        shift every node agrees on.

        The shift comes from the wall-clock round number (of when the probe was due, so
        an early probe keeps its round), so within one probe interval every member is
        probed by exactly one member (views agreeing): a crashed node is found within
        one interval, not after a random wait. The ring holds live members only: with
        dead ones on it, skipping them made some members the target of two probers and
        others of none, for rounds on end (a kill after five others waited 3.9 s for
        its first probe).
        """
        n = len(self._ring)
        if n < 2:
            return None
        round_no = due_wall_ms // int(self.tuning.probe_interval_s * 1000)
        digest = hashlib.blake2b(round_no.to_bytes(8, "big"), digest_size=8).digest()
        shift = 1 + int.from_bytes(digest, "big") % (n - 1)
        start = bisect.bisect_left(self._ring, self.node_id)
        for step in range(n - 1):
            member = self.members.get(self._ring[(start + shift + step) % n])
            if member is not None and member.state in (ALIVE, SUSPECT) and member.address:
                return member
        return None

    def _start_probe(self, target: Member, verify: bool) -> None:
        if any(p.target == target.node_id and p.relay_for is None for p in self._probes.values()):
            return
        self._probe_number += 1
        timeout = scaled_timeout(self.tuning.probe_timeout_s, self.awareness)
        probe = Probe(target.node_id, self._probe_number, self._now + timeout, verify=verify)
        self._probes[self._probe_number] = probe
        if verify:
            # A confirmation is worth having fast, and only if the path is really gone:
            # the direct ping and the helpers' go out at once, one timeout for all.
            self._go_indirect(probe, target)
            return
        body: dict[str, Any] = {"n": self._probe_number}
        if (self._hash_check or self._unsettled()) and not verify:
            body["h"] = self.table.table_hash[:HASH_CHECK_BYTES]
            self._hash_check = False
        self._send(target, MsgType.PING, body)

    def _probe_expired(self, number: int, probe: Probe) -> None:
        target = self.members.get(probe.target)
        if probe.relay_for is not None:
            del self._probes[number]
            requester = self.members.get(probe.relay_for[0])
            if requester is not None:
                self._send(requester, MsgType.NACK, {"n": probe.relay_for[1]},
                           address=probe.relay_for[2])
            return
        if target is None or target.state not in (ALIVE, SUSPECT):
            del self._probes[number]
            return
        if not probe.indirect:
            self._go_indirect(probe, target)
            return
        del self._probes[number]
        if probe.nacks < probe.nacks_expected:
            self.awareness = min(self.tuning.awareness_max, self.awareness + 1)
        self._suspect_by_me(target)

    def _go_indirect(self, probe: Probe, target: Member) -> None:
        """Ask k others to ping the target for us (SWIM), expecting nacks if they fail (Lifeguard)."""
        helpers = self._random_members(self.tuning.indirect_checks, exclude=[target.node_id])
        probe.indirect = True
        probe.nacks_expected = len(helpers)
        probe.deadline = self._now + scaled_timeout(self.tuning.indirect_timeout_s, self.awareness)
        for helper in helpers:
            self._send(helper, MsgType.PING_REQ, {"n": probe.number, "t": target.node_id})
        self._send(target, MsgType.PING, {"n": probe.number})

    def _on_ping(self, member: Member, f: Fields, addr: Address) -> None:
        self._send(member, MsgType.ACK, {"n": f.int("n")}, address=addr)
        theirs = f.bytes("h", size=HASH_CHECK_BYTES, optional=True)
        if theirs is not None and theirs != self.table.table_hash[:HASH_CHECK_BYTES]:
            self._catch_up(member)

    def _on_ack(self, member: Member, f: Fields, addr: Address) -> None:
        probe = self._probes.get(f.int("n"))
        if probe is None or probe.target != member.node_id:
            return
        del self._probes[probe.number]
        if probe.relay_for is not None:
            requester = self.members.get(probe.relay_for[0])
            if requester is not None:
                self._send(requester, MsgType.ACK, {"n": probe.relay_for[1], "t": member.node_id},
                           address=probe.relay_for[2])
            return
        self._probe_succeeded(probe)

    def _on_relayed_ack(self, probe: Probe) -> None:
        del self._probes[probe.number]
        self._probe_succeeded(probe)

    def _probe_succeeded(self, probe: Probe) -> None:
        if not probe.verify:
            self.awareness = max(0, self.awareness - 1)

    def _on_ack_any(self, member: Member, f: Fields, addr: Address) -> None:
        """An ACK is either from the target itself or relayed by a helper (it names the target)."""
        target = f.bytes("t", size=32, optional=True)
        if target is None:
            self._on_ack(member, f, addr)
            return
        probe = self._probes.get(f.int("n"))
        if probe is not None and probe.target == target and probe.relay_for is None:
            self._on_relayed_ack(probe)

    def _on_nack(self, member: Member, f: Fields, addr: Address) -> None:
        probe = self._probes.get(f.int("n"))
        if probe is not None and probe.indirect:
            probe.nacks += 1

    def _on_ping_req(self, member: Member, f: Fields, addr: Address) -> None:
        target = self.members.get(f.bytes("t", size=32))
        if target is None or target.address is None:
            self._send(member, MsgType.NACK, {"n": f.int("n")}, address=addr)
            return
        self._probe_number += 1
        self._probes[self._probe_number] = Probe(
            target.node_id, self._probe_number, self._now + self.tuning.probe_timeout_s,
            relay_for=(member.node_id, f.int("n"), addr))
        self._send(target, MsgType.PING, {"n": self._probe_number})

    def _on_gossip(self, member: Member, f: Fields, addr: Address) -> None:
        """Items were handled in `_dispatch`; nothing else to do."""

    # --- suspicion ---------------------------------------------------------------

    def _suspect_by_me(self, target: Member) -> None:
        claim = Claim.make(self.key, target.node_id, target.incarnation, CLAIM_SUSPECT,
                           self._wall_ms)
        if self._apply_claim(claim):
            self._spread_claim(claim, direct_to=target)

    def _on_claim(self, obj: Any) -> None:
        claim = Claim.parse(obj)
        if abs(claim.wall_ms - self._wall_ms) > CLAIM_TTL_MS:
            raise StaleError("claim too old (or from the future)")
        if claim.claimant == self.node_id:
            return
        claimant = self.members.get(claim.claimant)
        if claimant is None:
            raise _UnknownSender("claim from a node we hold no record of")
        if claim.subject == self.node_id:
            if claim.incarnation == self._own_version():   # else outbid, or about no record of ours
                verify(claim.claimant, Domain.CLAIM, claim.signed)
                self._refute()
            return
        subject = self.members.get(claim.subject)
        # Only a claim about the record we hold counts: one about a version we never saw
        # (perhaps never issued) would start a suspicion no refutation we can receive ends.
        if subject is None or claim.incarnation != subject.incarnation:
            return
        suspicion = subject.suspicion
        if suspicion is not None and claim.claimant in suspicion.claimants:
            return
        if subject.state not in (ALIVE, SUSPECT):
            return
        verify(claim.claimant, Domain.CLAIM, claim.signed)
        fresh = suspicion is None
        if self._apply_claim(claim):
            tell = fresh and self.rng.random() < SUSPECT_TOLD_BY / max(1, self.alive_count - 2)
            self._spread_claim(claim, direct_to=subject if tell else None)
        if fresh and self.rng.random() < self.tuning.verify_probes / max(1, self.alive_count - 2):
            self._start_probe(subject, verify=True)

    def _apply_claim(self, claim: Claim) -> bool:
        """Count a claimant against the subject; True if it changed our view (worth relaying)."""
        subject = self.members[claim.subject]
        tuning = self.tuning
        n = self.alive_count
        max_s = suspicion_max_s(tuning.suspicion_mult, n, tuning.probe_interval_s)
        min_s = min(tuning.suspicion_min_s, max_s)
        if subject.suspicion is None:
            # The clock starts when the claimant accused, not when the claim reached us, so
            # every node's floor ends together (one reached by a later gossip round is not
            # the last to see the death); backdated by at most the floor, so a lying
            # claimant barely shortens the long timeout a lone accuser waits.
            age_s = min(max(0.0, (self._wall_ms - claim.wall_ms) / 1000), min_s)
            started = self._now - age_s
            self._suspects[subject.node_id] = None
            subject = self._set_state(subject, SUSPECT, MemberSuspected, Suspicion(
                claim.incarnation, started, set(), started + max_s, {}))
        suspicion = subject.suspicion
        assert suspicion is not None
        if claim.claimant in suspicion.claimants:
            return False
        suspicion.claimants.add(claim.claimant)
        suspicion.claims[claim.claimant] = claim
        # The first accuser's word starts the clock; others confirm and shorten it.
        confirmations = len(suspicion.claimants) - 1
        remaining = remaining_suspicion_s(confirmations, tuning.confirmations,
                                          self._now - suspicion.started, min_s, max_s)
        suspicion.deadline = self._now + max(0.0, remaining)
        return len(suspicion.claimants) <= tuning.confirmations + 2

    def _refute(self) -> None:
        """Someone thinks we are unreachable: outbid the claim with a newer record."""
        self.awareness = min(self.tuning.awareness_max, self.awareness + 1)
        self._publish_self(self.info)

    def _own_version(self) -> int:
        record = self.table.node(self.node_id)
        return record.version if record is not None else 0

    def _declare_dead(self, member: Member) -> None:
        suspicion = member.suspicion
        self._set_state(member, DEAD, MemberDied, None)
        if suspicion is not None and not any(c.kind == CLAIM_DEAD for c in suspicion.claims.values()):
            self._spread_claim(Claim.make(self.key, member.node_id, member.incarnation, CLAIM_DEAD,
                                          self._wall_ms))

    # --- rounds --------------------------------------------------------------------

    def _gossip_round(self) -> None:
        if not len(self._broadcasts):
            return
        for member in self._random_members(self.tuning.fanout):
            self._send(member, MsgType.GOSSIP, {})

    def _push_pull(self, settling: bool) -> None:
        """Anti-entropy. Settling after a join: a push-pull with the seed that answered
        (in a join storm every hello reached it, so it knows every joiner by then), then
        with random members. Else the next probe carries our table hash (the target opens
        a push-pull if its table differs), or, half the time while some members are dead,
        a push-pull to a dead one (it may be back: how a healed partition finds out)."""
        seed = self.members.get(self._seed_answered) if self._seed_answered else None
        self._seed_answered = None
        if settling:
            targets = [seed] if seed is not None and _reachable(seed) else self._random_members(1)
        else:
            dead = [m for m in self.members.values() if m.state == DEAD and m.address]
            if not dead or self.rng.random() >= 0.5:
                self._hash_check = True
                return
            targets = [self.rng.choice(dead)]
        for target in targets:
            if len(self._syncs) < MAX_PENDING_SYNCS and target.address is not None:
                self._syncs.append((target.node_id, target.address))

    def _collect(self) -> None:
        """Reap members dead or gone for `reap_s`, then let the table drop old tombstones."""
        for member in list(self.members.values()):
            if member.state in (DEAD, LEFT) and self._now - member.since > self.tuning.reap_s:
                for change in self.table.drop_origin(member.node_id, self._wall_ms):
                    self._on_change(change)
                self._forget(member.node_id)
        for change in self.table.collect(self._wall_ms):
            self._on_change(change)
        self._hellos.collect(self._now)

    # --- joining -------------------------------------------------------------------

    def _own_record(self) -> list[Any]:
        record = self.table.node(self.node_id)
        assert record is not None
        return record.to_wire()

    def _send_hellos(self) -> None:
        if self._joined:
            self._join_at = None
            return
        for seed in self._seeds:
            self._emit(self._hellos.make(self._own_record(), self._now, self._wall_ms), seed)
        self._join_at = self._now + self.tuning.join_retry_s

    def _on_hello(self, msg: wire.Message, addr: Address) -> None:
        """The one thing accepted from strangers: a signed, fresh, CA-checked self-introduction."""
        self._hellos.rate_limit(addr[0], self._now)
        hello = self._hellos.check(msg, self._now, self._wall_ms)
        result = self._merge([hello.record], eager=True)
        if result.rejected:
            return
        if self.table.node(hello.sender) is None:
            raise _UnknownSender("hello record does not name its sender")
        if not hello.is_reply:
            self._emit(self._hellos.make(self._own_record(), self._now, self._wall_ms,
                                         reply_to=hello.nonce), addr)
            return
        self._joined = True
        self._join_at = None
        self._hellos.answered()
        member = self.members.get(hello.sender)
        if member is not None and member.address is not None:
            self._syncs.append((hello.sender, member.address))
        self._seed_answered = hello.sender
        self._settle_gaps = [gap * self.tuning.probe_interval_s for gap in JOIN_SETTLE_GAPS]
        self._push_pull_at = self._now + self._settle_gaps[0]


def _packed(sized: list[tuple[Any, int]], budget: int) -> Iterable[list[Any]]:
    """Items grouped in order into lists of at most `budget` bytes and
    `MAX_ITEMS_PER_DATAGRAM` items (an item larger than the budget goes alone)."""
    group: list[Any] = []
    room = budget
    for item, size in sized:
        if group and (size > room or len(group) == MAX_ITEMS_PER_DATAGRAM):
            yield group
            group, room = [], budget
        group.append(item)
        room -= size
    if group:
        yield group


def _record_item(record: Record) -> tuple[list[Any], int]:
    """A table record as a piggyback item, and the bytes it takes in a datagram."""
    return [ITEM_RECORD, record.to_wire()], record.wire_size() + 4


def _reachable(member: Member) -> bool:
    return member.state in LIVE_STATES and member.address is not None


class _UnknownSender(RemoteError):
    reason = "unknown_sender"


#: Each message type's name in error messages, made once: an enum's `.name` is a
#: Python-level property, and every datagram names its type to `Fields`.
_WHAT: dict[MsgType, str] = {kind: kind.name.lower() for kind in MsgType}

_HANDLERS: dict[MsgType, Callable[[Gossip, Member, Fields, Address], None]] = {
    MsgType.PING: Gossip._on_ping,
    MsgType.ACK: Gossip._on_ack_any,
    MsgType.NACK: Gossip._on_nack,
    MsgType.PING_REQ: Gossip._on_ping_req,
    MsgType.GOSSIP: Gossip._on_gossip,
}
