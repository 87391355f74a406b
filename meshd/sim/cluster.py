"""A simulated cluster: N real gossip engines on one virtual clock and one modelled network.

The engines are the daemon's own sans-IO `Gossip` objects; this module is the
shell around them that `meshd.agent` is around one engine, with the socket
replaced by `Network` and the event loop by `VirtualClock`. Everything random
comes from one `random.Random(seed)`, so a seed replays a run exactly.

Memory stays per view, not per copy: every table shares one `RecordCache` and
one certificate cache, so a record object and its verification exist once
for the whole cluster, and member addresses are interned tuples.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import nacl.signing

from meshd.errors import MeshdError
from meshd.gossip.engine import Address, Gossip, Member
from meshd.gossip.events import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    MemberAlive,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    MemberUpdated,
)
from meshd.gossip.sync import SyncSession
from meshd.gossip.tuning import GossipTuning
from meshd.identity import (
    DEFAULT_SERVICE_RANGE,
    Certificate,
    Trust,
    public_id,
    signing_key_from_seed,
)
from meshd.identity import (
    Cluster as ClusterFile,
)
from meshd.records import KIND_NODE, NODE_KEY, NodeInfo
from meshd.sim.clock import VirtualClock
from meshd.sim.net import NetModel, Network
from meshd.table import RecordCache, Table, VersionClock

EPOCH_MS = 1_767_225_600_000                    # virtual t = 0 is 2026-01-01T00:00:00Z
CERT_DAYS_MS = 30 * 86_400_000
MESH_PREFIX = ipaddress.IPv6Network("fd00:5e:5e::/48")
GOSSIP_PORT = 7946
TIMER_RESOLUTION_S = 0.001                      # like a real loop: a due timer runs 1 ms later at most
UPDATED = "updated"                             # not a liveness state: a newer record of a live member

_STATE_OF = {
    MemberJoined: ALIVE, MemberAlive: ALIVE, MemberSuspected: SUSPECT,
    MemberDied: DEAD, MemberLeft: LEFT, MemberUpdated: UPDATED,
}


class ConvergenceTimeout(RuntimeError):
    """A simulated cluster did not reach the state a scenario needs in time."""


@dataclass(frozen=True, slots=True)
class Seen:
    """At `t_s`, `observer` saw `subject` enter `state` (at that record version)."""

    t_s: float
    observer: int
    subject: int
    state: str
    incarnation: int


@dataclass(slots=True)
class Traffic:
    """What one node sent: datagrams and push-pull stream frames."""

    datagrams: int = 0
    datagram_bytes: int = 0
    frames: int = 0
    frame_bytes: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.datagrams + other.datagrams, self.datagram_bytes + other.datagram_bytes,
                       self.frames + other.frames, self.frame_bytes + other.frame_bytes)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.datagrams - other.datagrams, self.datagram_bytes - other.datagram_bytes,
                       self.frames - other.frames, self.frame_bytes - other.frame_bytes)

    @property
    def messages(self) -> int:
        return self.datagrams + self.frames

    @property
    def bytes(self) -> int:
        return self.datagram_bytes + self.frame_bytes

    def rate(self, seconds: float) -> tuple[float, float]:
        """(messages, bytes) per second, for traffic counted over `seconds`."""
        return self.messages / seconds, self.bytes / seconds


@dataclass(slots=True)
class SimNode:
    """One simulated host: its identity outlives crashes, its engine does not."""

    slot: int
    key: nacl.signing.SigningKey
    node_id: bytes
    info: NodeInfo
    address: Address
    engine: Gossip | None = None
    boot: int = 0                   # bumped on crash: timers and streams of an older boot are void
    clock_last: int = 0             # the persisted version clock, what a restart starts above
    delay_s: float = 0.0            # CPU starvation: every input is handled this much later
    timer_at: float = math.inf      # the earliest timer wake-up scheduled for this boot
    carried: Traffic = field(default_factory=Traffic)   # not in the engine's stats
    ever_crashed: bool = False

    @property
    def up(self) -> bool:
        return self.engine is not None


@dataclass(slots=True)
class _Stream:
    """One push-pull connection: initiator at index 0, responder at 1."""

    ends: tuple[int, int]
    boots: tuple[int, int]
    sessions: list[SyncSession | None]
    last_arrival_s: list[float]     # per direction: frames of one stream arrive in order


class Cluster:
    """N engines, a CA that certified them, the network between them, and what they saw."""

    def __init__(self, n: int, seed: int, *, tuning: GossipTuning | None = None,
                 net: NetModel | None = None) -> None:
        self.seed = seed
        self.tuning = tuning or GossipTuning.lan()
        self._rng = random.Random(seed)
        self.clock = VirtualClock()
        self.net = Network(net or NetModel(), random.Random(self._rng.getrandbits(64)))
        self._records = RecordCache(max_entries=max(200_000, 4 * n))
        self._certs: dict[bytes, Certificate] = {}
        ca_key = signing_key_from_seed(self._rng.randbytes(32))
        self.cluster_file = ClusterFile.issue(ca_key, MESH_PREFIX, DEFAULT_SERVICE_RANGE, "routed",
                                              EPOCH_MS)
        self.nodes = [self._make_node(ca_key, slot) for slot in range(n)]
        self._slot_by_address = {node.address: node.slot for node in self.nodes}
        self._address_by_text = {node.info.gossip: node.address for node in self.nodes}
        self._slot_by_id = {node.node_id: node.slot for node in self.nodes}
        self.log: list[Seen] = []
        self._seen_by_subject: dict[int, list[Seen]] = collections.defaultdict(list)
        self.false_suspicions = 0
        self.false_deaths = 0
        self.streams_failed = 0

    # --- building ----------------------------------------------------------------

    def _make_node(self, ca_key: nacl.signing.SigningKey, slot: int) -> SimNode:
        key = signing_key_from_seed(self._rng.randbytes(32))
        name = f"n{slot}"
        cert = Certificate.issue(ca_key, public_id(key), name, {}, EPOCH_MS - 86_400_000,
                                 EPOCH_MS + CERT_DAYS_MS, self._rng.randbytes(16))
        host = str(ipaddress.IPv4Address("10.0.0.0") + slot + 1)
        info = NodeInfo(name=name, cert=cert.signed, gossip=f"{host}:{GOSSIP_PORT}")
        return SimNode(slot, key, public_id(key), info, (host, GOSSIP_PORT))

    def _new_table(self) -> Table:
        return Table(Trust(self.cluster_file, cert_cache=self._certs), cache=self._records)

    def _new_engine(self, node: SimNode, table: Table | None = None) -> Gossip:
        return Gossip(key=node.key, table=table or self._new_table(), info=node.info,
                      clock=VersionClock(node.clock_last), tuning=self.tuning,
                      rng=random.Random(self._rng.getrandbits(64)), address_of=self._address_of)

    def _address_of(self, info: NodeInfo) -> Address | None:
        """The shared address tuple of a member, so N views hold one copy."""
        return self._address_by_text.get(info.gossip) if info.gossip else None

    # --- time --------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.clock.now * 1000)

    def periods(self, seconds: float) -> float:
        """Seconds expressed in protocol periods (probe intervals)."""
        return seconds / self.tuning.probe_interval_s

    def run_for(self, seconds: float) -> None:
        self.clock.run_until(self.clock.now + seconds)

    def run_until(self, predicate: Callable[[], bool], timeout_s: float,
                  step_s: float = 0.5) -> float | None:
        """Run in steps until `predicate()` holds; the time it first held, or None on timeout."""
        for _ in range(math.ceil(timeout_s / step_s) + 1):
            if predicate():
                return self.clock.now
            self.run_for(step_s)
        return None

    # --- membership controls ----------------------------------------------------------

    def start(self, slot: int, seeds: Sequence[int] = ()) -> None:
        """Boot a node's engine now and join through the given seed nodes."""
        node = self.nodes[slot]
        if node.engine is not None:
            raise ValueError(f"node {slot} is already running")
        node.engine = self._new_engine(node)
        node.timer_at = math.inf
        node.engine.start(self.clock.now, self.wall_ms())
        node.engine.join([self.nodes[s].address for s in seeds], self.clock.now, self.wall_ms())
        self._after(node)

    def join_all(self, stagger_s: float = 0.0, seed_slot: int = 0) -> None:
        """Start every node, node `seed_slot` first, the others joining through it `stagger_s` apart."""
        self.start(seed_slot)
        others = [node.slot for node in self.nodes if node.slot != seed_slot]
        for index, slot in enumerate(others, start=1):
            if stagger_s:
                self.clock.call_later(index * stagger_s, self.start, slot, (seed_slot,))
            else:   # all at once: running before the first step, as `run_until` expects
                self.start(slot, (seed_slot,))

    def form(self, timeout_s: float = 120.0, stagger_s: float = 0.0) -> float:
        """Join every node through node 0 and run until converged; the time that took."""
        self.join_all(stagger_s)
        at = self.run_until(self.converged, timeout_s, step_s=0.25)
        if at is None:
            raise ConvergenceTimeout(f"seed {self.seed}: {len(self.nodes)} nodes did not "
                                     f"converge within {timeout_s} s")
        return at

    def start_formed(self) -> None:
        """Start every node as a member of a cluster formed already: where `form` ends,
        without the join storm. Each node publishes its record into one table, each
        engine starts on a fork of it, and all share one member view; forks and engines
        copy what they change. A join storm builds N tables and N views of N members
        each, record by record, and at N = 10,000 those do not fit in RAM.
        """
        if any(node.up for node in self.nodes):
            raise ValueError("start_formed starts a cluster from nothing; nodes are running")
        wall_ms = self.wall_ms()
        formed = self._new_table()
        members: dict[bytes, Member] = {}
        for node in self.nodes:
            formed.publish(node.key, KIND_NODE, NODE_KEY, node.info, wall_ms, wall_ms)
            members[node.node_id] = Member(node.node_id, node.info.name, wall_ms, node.address,
                                           since=self.clock.now)
        for node in self.nodes:
            node.engine = self._new_engine(node, formed.fork())
            node.timer_at = math.inf
            node.engine.start_formed(members, self.clock.now, wall_ms)
            self._after(node)

    def crash(self, slot: int) -> None:
        """Stop a node dead: no leave, its timers stop and packets to it vanish."""
        node = self.nodes[slot]
        engine = node.engine
        if engine is None:
            raise ValueError(f"node {slot} is not running")
        node.carried = node.carried + _engine_traffic(engine)
        node.clock_last = engine.clock.last
        node.engine = None
        node.boot += 1
        node.ever_crashed = True

    def restart(self, slot: int, seeds: Sequence[int] | None = None) -> None:
        """Boot a crashed node again: same key, a fresh engine, its persisted version clock."""
        if seeds is None:
            seeds = [next(n.slot for n in self.nodes if n.up and n.slot != slot)]
        self.start(slot, seeds)

    def set_tags(self, slot: int, tags: dict[str, str]) -> int:
        """Change a node's tags; returns the version (incarnation) of its new record."""
        engine = self._engine(slot)
        engine.set_tags(tags, self.clock.now, self.wall_ms())
        self._after(self.nodes[slot])
        return engine.clock.last

    def starve(self, slot: int, delay_s: float) -> None:
        """Make a node handle every datagram, frame and timer `delay_s` late (0 ends it)."""
        self.nodes[slot].delay_s = delay_s

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        self.net.partition(groups)

    def heal(self) -> None:
        self.net.heal()

    def set_loss(self, loss: float) -> None:
        self.net.loss = loss

    def set_link_loss(self, src: int, dst: int, loss: float) -> None:
        self.net.set_link_loss(src, dst, loss)

    def act(self, slot: int, action: Callable[[Gossip], None]) -> None:
        """Drive a node's engine directly, then ship what it produced (adversaries, odd tests)."""
        action(self._engine(slot))
        self._after(self.nodes[slot])

    def _engine(self, slot: int) -> Gossip:
        engine = self.nodes[slot].engine
        if engine is None:
            raise ValueError(f"node {slot} is not running")
        return engine

    # --- the shell around each engine -------------------------------------------------

    def _after(self, node: SimNode) -> None:
        """Collect what an engine produced: datagrams, streams, events; re-arm its timer."""
        engine = node.engine
        assert engine is not None
        for data, address in engine.datagrams_to_send():
            self._route(node, data, address)
        for peer, address in engine.syncs_to_start():
            self._open_stream(node, peer, address)
        self._record_events(node, engine)
        at = max(engine.next_deadline(), self.clock.now + TIMER_RESOLUTION_S)
        if at < node.timer_at:
            node.timer_at = at
            self.clock.call_at(at, self._on_timer, node.slot, node.boot, at, False)

    def _on_timer(self, slot: int, boot: int, at: float, late: bool) -> None:
        node = self.nodes[slot]
        if node.engine is None or node.boot != boot:
            return
        if not late:
            if node.timer_at != at:     # an earlier wake-up superseded this one
                return
            node.timer_at = math.inf
            if node.delay_s:
                self.clock.call_later(node.delay_s, self._on_timer, slot, boot, at, True)
                return
        node.engine.handle_timer(self.clock.now, self.wall_ms())
        self._after(node)

    def _route(self, src: SimNode, data: bytes, address: Address) -> None:
        dst = self._slot_by_address.get(address)
        if dst is None:
            return
        delay = self.net.datagram_delay(src.slot, dst)
        if delay is not None:
            self.clock.call_later(delay, self._deliver, dst, data, src.address, False)

    def _deliver(self, slot: int, data: bytes, source: Address, late: bool) -> None:
        node = self.nodes[slot]
        if node.engine is None:
            return
        if node.delay_s and not late:
            self.clock.call_later(node.delay_s, self._deliver, slot, data, source, True)
            return
        node.engine.receive_datagram(data, source, self.clock.now, self.wall_ms())
        self._after(node)

    # --- push-pull streams --------------------------------------------------------

    def _open_stream(self, node: SimNode, peer: bytes, address: Address) -> None:
        """Connect (a round trip: SYN, SYN-ACK), then send the initiator's first frame."""
        dst = self._slot_by_address.get(address)
        one_way = None if dst is None else self.net.stream_delay(node.slot, dst)
        if dst is None or one_way is None or not self.nodes[dst].up:
            self.streams_failed += 1
            return
        assert node.engine is not None
        session, frame = node.engine.open_sync(peer)
        now = self.clock.now
        stream = _Stream((node.slot, dst), (node.boot, self.nodes[dst].boot), [session, None],
                         [now, now])
        self._stream_send(stream, 0, [frame], connect_s=2 * one_way)

    def _stream_send(self, stream: _Stream, side: int, frames: list[bytes],
                     connect_s: float = 0.0) -> None:
        src, dst = stream.ends[side], stream.ends[1 - side]
        sender = self.nodes[src]
        for frame in frames:
            delay = self.net.stream_delay(src, dst)
            if delay is None:
                self.streams_failed += 1
                return
            at = max(self.clock.now + connect_s + delay, stream.last_arrival_s[side])
            stream.last_arrival_s[side] = at
            sender.carried.frames += 1
            sender.carried.frame_bytes += len(frame)
            self.clock.call_at(at, self._on_frame, stream, 1 - side, frame, False)

    def _on_frame(self, stream: _Stream, side: int, frame: bytes, late: bool) -> None:
        node = self.nodes[stream.ends[side]]
        if not self._stream_intact(stream):
            self.streams_failed += 1
            return
        if node.delay_s and not late:
            self.clock.call_later(node.delay_s, self._on_frame, stream, side, frame, True)
            return
        assert node.engine is not None
        session = stream.sessions[side]
        if session is None:
            session = stream.sessions[side] = node.engine.accept_sync()
        try:
            replies = session.receive(frame, self.clock.now, self.wall_ms())
        except MeshdError:
            self.streams_failed += 1
            return
        self._after(node)
        if replies:
            self._stream_send(stream, side, replies)

    def _stream_intact(self, stream: _Stream) -> bool:
        """A stream dies with either end (crash or restart) or when a partition cuts it."""
        a, b = (self.nodes[slot] for slot in stream.ends)
        return (a.up and b.up and (a.boot, b.boot) == stream.boots
                and self.net.reachable(a.slot, b.slot))

    # --- what the nodes saw --------------------------------------------------------

    def _record_events(self, node: SimNode, engine: Gossip) -> None:
        while (event := engine.next_event()) is not None:
            state = _STATE_OF.get(type(event))
            if state is None:
                continue
            subject = self._slot_by_id[event.node_id]
            seen = Seen(self.clock.now, node.slot, subject, state, event.incarnation)
            self.log.append(seen)
            self._seen_by_subject[subject].append(seen)
            if not self.nodes[subject].ever_crashed:
                self.false_suspicions += state == SUSPECT
                self.false_deaths += state == DEAD

    def first_seen(self, subject: int, state: str, since_s: float = 0.0) -> dict[int, float]:
        """Per observer, the first time at or after `since_s` it saw `subject` in `state`."""
        first: dict[int, float] = {}
        for seen in self._seen_by_subject.get(subject, ()):
            if seen.state == state and seen.t_s >= since_s and seen.observer not in first:
                first[seen.observer] = seen.t_s
        return first

    def live(self) -> list[SimNode]:
        """Nodes running and not gone (left)."""
        return [node for node in self.nodes if node.engine is not None and not node.engine.left]

    def state(self, observer: int, subject: int) -> str | None:
        """How `observer` sees `subject` now (None: not a member in its view, or not running)."""
        return _state_of(self.nodes[observer].engine, self.nodes[subject].node_id)

    def all_see(self, subject: int, state: str) -> bool:
        """Every other live node holds `subject` in `state`."""
        return all(self.state(node.slot, subject) == state
                   for node in self.live() if node.slot != subject)

    def converged(self) -> bool:
        """One table hash among live nodes, and each sees every other live node alive."""
        live = self.live()
        if len({node.engine.table.table_hash for node in live if node.engine}) > 1:
            return False
        ids = [node.node_id for node in live]
        return all(_state_of(node.engine, other) == ALIVE
                   for node in live for other in ids if other != node.node_id)

    def drained(self) -> bool:
        """No live node has updates left to piggyback: what remains is the idle protocol."""
        return all(node.engine.queued_broadcasts == 0 for node in self.live() if node.engine)

    def sent(self) -> list[Traffic]:
        """Per node, everything sent so far: subtract two snapshots for a window."""
        return [self.traffic(node.slot) for node in self.nodes]

    def traffic(self, slot: int) -> Traffic:
        """Everything node `slot` sent since the start, across restarts."""
        node = self.nodes[slot]
        return node.carried + (_engine_traffic(node.engine) if node.engine else Traffic())


def _state_of(engine: Gossip | None, node_id: bytes) -> str | None:
    member = engine.members.get(node_id) if engine is not None else None
    return member.state if member is not None else None


def _engine_traffic(engine: Gossip) -> Traffic:
    return Traffic(engine.stats.sent_datagrams, engine.stats.sent_bytes)
