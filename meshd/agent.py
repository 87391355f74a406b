"""The asyncio shell around the gossip engine: sockets, one timer, one TaskGroup.

`Agent.run(ready, stop)` loads the identity, binds every socket (a startup
failure raises from here, before anything runs), then opens one TaskGroup
that owns every task:

    gossip.pump    owns the gossip thread (pump.py): the UDP socket on
                   `[gossip] listen` and the engine's one deadline, handled in
                   poll(2) off the loop; cancelling the task stops the thread
    sync.server    push-pull over TCP on the same address (one task per
                   connection, `sync.conn`, bounded); outgoing syncs run as
                   `sync.out` tasks, bounded too
    control        the HTTP control socket (control.py), if served
    metrics        Prometheus text on `[metrics] listen`, if configured
    state          writes the last version and tags to `state_dir` off the loop

Every input is handled where it arrives: datagrams and timers on the gossip
thread, sync frames and commands on the loop, each under the engine lock;
whatever the engine then holds for the shell (events, syncs to start, a
version to persist) is flushed on the loop. An idle node wakes only for its
own probes and the datagrams it gets, and only the gossip thread wakes: on a
small VM each asyncio wake-up costs ~0.2 ms of CPU, so wake-ups, not Python
work, set the idle CPU figure. The engine catches what peers get wrong; the
shell catches what sockets and sessions raise, per peer, counts it in
`meshd_dropped_total` and logs at DEBUG: a peer can cost a counter, never a
task. On `stop` the node publishes its signed `left` record, pushes it, waits
a bounded moment for the datagrams to leave, and exits.

Push-pull frames on the stream are a 4-byte big-endian length, then the
frame (at most `wire.MAX_STREAM_FRAME_BYTES`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import threading
import time
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from meshd import control, keyfiles, metrics, serve, wire
from meshd import state as statefile
from meshd.config import Config, Endpoint, GossipConfig
from meshd.errors import (
    ConfigError,
    GrantViolationError,
    KeyFileError,
    MeshdError,
    TooLargeError,
    UsageError,
    VerificationError,
)
from meshd.events import (
    STATES,
    EventFeed,
    Member,
    MemberAlive,
    MemberDied,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberTagsChanged,
    Subscription,
)
from meshd.gossip import events as engine_events
from meshd.gossip.engine import Gossip
from meshd.gossip.events import ALIVE, DEAD, LEFT, SUSPECT
from meshd.gossip.sync import SyncSession
from meshd.gossip.tuning import GossipTuning
from meshd.identity import IPNetwork, Trust, b64, public_id
from meshd.pump import DatagramPump, wall_ms
from meshd.records import MAX_TAG_BYTES, MAX_TAGS, NodeInfo
from meshd.table import Table, VersionClock

log = logging.getLogger("meshd.agent")

FRAME_HEADER = struct.Struct(">I")
SYNC_TIMEOUT_S = 10.0
# Inbound push-pulls at once, and more that wait for one of those to end: a join storm
# sends every joiner to its seed together, and on a loaded host each exchange waits on
# its initiator's turn for the CPU. A refused joiner would wait for its next settling sync.
MAX_SYNCS_IN = 32
MAX_SYNCS_WAITING = 224
# An opening SYNC_HASH is a hash and a few claims; bigger frames need a verified peer.
MAX_OPENING_FRAME_BYTES = 64 * 1024
MAX_SYNCS_OUT = 4
MAX_METRICS_CONNECTIONS = 4
METRICS_MAX_BODY_BYTES = 1024
LEAVE_DRAIN_S = 0.5
LEAVE_POLL_S = 0.01
# A sync frame this large (about 160 node records, 25 ms of signature checks) is verified
# on a worker thread, off the event loop; a smaller one on the loop. The hand-off only
# pays where a core is idle, and costs everywhere: with every core busy (100 agents
# joining on 2 cores) a 4 KiB threshold cost 12 % more CPU per agent and join time than
# none (bench/RESULTS.md, session 14).
WARM_OFF_LOOP_BYTES = 64 * 1024

# What the gossip socket asks the kernel to queue for it (memberlist asks the same of its
# receive buffer). A join storm lands on the seed and on every eager-push target at once,
# while a busy host may not run the gossip thread for tens of ms: the default (212,992
# bytes, about 90 full datagrams) overflowed in 1 of 7 100-agent joins on 2 cores (25
# datagrams lost, counted in /proc/net/snmp RcvbufErrors; none in 9 with this), each a
# record to be fetched again later. Linux caps the request at net.core.rmem_max/wmem_max.
UDP_BUFFER_BYTES = 2 * 1024 * 1024

# Config override key -> (GossipTuning field, factor to the field's unit).
TUNING_OVERRIDES: dict[str, tuple[str, float]] = {
    "probe_interval_ms": ("probe_interval_s", 0.001),
    "probe_timeout_ms": ("probe_timeout_s", 0.001),
    "suspicion_mult": ("suspicion_mult", 1),
    "retransmit_mult": ("retransmit_mult", 1),
    "fanout": ("fanout", 1),
    "push_pull_interval_s": ("push_pull_interval_s", 1),
    "reap_s": ("reap_s", 1),
}

# Engine event -> (public event, the state it puts the member in; None keeps the last one).
STATE_EVENTS: dict[type, tuple[type[MemberEvent], str | None]] = {
    engine_events.MemberJoined: (MemberJoined, ALIVE),
    engine_events.MemberSuspected: (MemberSuspected, SUSPECT),
    engine_events.MemberAlive: (MemberAlive, ALIVE),
    engine_events.MemberDied: (MemberDied, DEAD),
    engine_events.MemberLeft: (MemberLeft, LEFT),
    engine_events.MemberReaped: (MemberReaped, None),
}
# What an operator wants to hear about at INFO; the rest is DEBUG.
NOTABLE_EVENTS = (MemberSuspected, MemberAlive, MemberDied, MemberLeft)


class _Shutdown(Exception):
    """Raised inside the TaskGroup to cancel every task once the node has left."""


# --- building the engine from the config ------------------------------------------


def tuning_for(gossip: GossipConfig) -> GossipTuning:
    """The profile's timings with the config's explicit overrides applied."""
    changes = {name: getattr(gossip, key) * factor
               for key, (name, factor) in TUNING_OVERRIDES.items()
               if getattr(gossip, key) is not None}
    tuning = dataclasses.replace(GossipTuning.profile(gossip.profile), **changes)
    if tuning.probe_timeout_s >= tuning.probe_interval_s:
        raise ConfigError(f"gossip.probe_timeout_ms: {tuning.probe_timeout_s * 1000:g} ms must be "
                          f"below the probe interval ({tuning.probe_interval_s * 1000:g} ms)")
    return tuning


def advertised(gossip: GossipConfig) -> Endpoint:
    """The gossip address others use: `advertise`, else `listen` if it names one host."""
    if gossip.advertise is not None:
        return gossip.advertise
    if gossip.listen.host.is_unspecified:
        raise ConfigError(f"gossip.advertise: required when gossip.listen is {gossip.listen}")
    return gossip.listen


def gossip_socket(family: socket.AddressFamily) -> socket.socket:
    """A UDP socket with room to queue a join storm's datagrams (`UDP_BUFFER_BYTES`)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
    return sock


def build_engine(config: Config, saved: statefile.State, rng: random.Random,
                 now_ms: int) -> Gossip:
    """Load the identity files, check them against the config, and make the engine."""
    key = keyfiles.load_node_key(config.identity.key)
    cert = keyfiles.load_certificate(config.identity.cert)
    trust = Trust(keyfiles.load_cluster(config.identity.cluster))
    try:
        trust.verify_certificate(cert.signed, now_ms)
    except VerificationError as exc:
        raise ConfigError(f"identity.cert: {config.identity.cert}: {exc}") from None
    if cert.node_id != public_id(key):
        raise ConfigError(f"identity.cert: {config.identity.cert} certifies another node than "
                          f"identity.key")
    if cert.name != config.name:
        raise ConfigError(f"name: {config.name!r}, but the certificate names {cert.name!r}")
    subnets: dict[str, tuple[IPNetwork, ...]] = {}
    for vpc in config.vpcs:
        try:
            cert.check_grant(vpc.name, vpc.subnet)
        except GrantViolationError as exc:
            raise ConfigError(f"vpc.{vpc.name}.subnet: {exc}") from None
        subnets[vpc.name] = (vpc.subnet,)
    info = NodeInfo(name=config.name, cert=cert.signed, gossip=str(advertised(config.gossip)),
                    subnets=subnets, tags=dict(saved.tags))
    return Gossip(key=key, table=Table(trust), info=info, clock=VersionClock(saved.version),
                  tuning=tuning_for(config.gossip), rng=rng)


def merge_tags(current: Mapping[str, str], set_: Mapping[str, str],
               unset: Iterable[str]) -> dict[str, str]:
    """`current` with `unset` removed and `set_` applied, checked against the record limits."""
    tags = {k: v for k, v in current.items() if k not in set(unset)}
    tags.update(set_)
    if len(tags) > MAX_TAGS:
        raise UsageError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for name, value in tags.items():
        if not name or "=" in name:
            raise UsageError(f"tag name {name!r} must be non-empty and hold no '='")
        if len(name) + len(value) > MAX_TAG_BYTES:
            raise UsageError(f"tag {name!r}: name and value together exceed {MAX_TAG_BYTES} "
                             "characters")
    return tags


def member_view(node_id: bytes, name: str, state: str, incarnation: int,
                info: NodeInfo | None, since_ms: int) -> Member:
    """The public snapshot of one member."""
    addresses: tuple[str, ...] = ()
    tags: Mapping[str, str] = MappingProxyType({})
    if info is not None:
        addresses = ((info.gossip,) if info.gossip else ()) + tuple(info.endpoints)
        tags = MappingProxyType(dict(info.tags))
    return Member(name, b64(node_id), state, incarnation, addresses, tags, since_ms)


# --- the shell -------------------------------------------------------------------


class Agent:
    """One node's membership agent (membership-only mode: no WireGuard, no root).

    `members()`, `members_json()` and `feed` may be read from any thread; the
    other methods belong to the loop that runs `run()`. The engine is shared with
    the gossip thread: touch it only under `_lock`.
    """

    def __init__(self, config: Config, *, serve_control: bool = True) -> None:
        self.config = config
        self.feed = EventFeed()
        self._serve_control = serve_control
        self._engine: Gossip | None = None
        self._group: asyncio.TaskGroup | None = None
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._pump: DatagramPump | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._members: tuple[Member, ...] = ()
        # What members_json() encoded last: per member (by ID), and the whole snapshot.
        self._member_bodies: dict[str, tuple[Member, bytes]] = {}
        self._members_body: tuple[tuple[Member, ...] | None, bytes] = (None, b"")
        self._current: dict[bytes, Member] = {}
        self._known: dict[bytes, Member] = {}
        self._snapshot_version = -1
        self._saved = statefile.State()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._tcp: collections.Counter[str] = collections.Counter()
        self._syncs: collections.Counter[str] = collections.Counter()
        self._syncs_out = 0
        self._started = 0.0
        self._state_dir = config.state_dir
        self._state_kick = asyncio.Event()    # wakes the state writer
        self._save_lock = asyncio.Lock()

    # --- reading (any thread) -----------------------------------------------------

    def members(self) -> tuple[Member, ...]:
        """The latest snapshot, this node first; never waits on the network."""
        return self._members

    def members_json(self) -> bytes:
        """The snapshot as a JSON array, encoded once per snapshot and per member: tools
        poll it, and at a hundred members encoding was most of a request's CPU."""
        members = self._members
        snapshot, body = self._members_body
        if snapshot is members:
            return body
        before = self._member_bodies
        bodies = {}
        for member in members:
            cached = before.get(member.id)
            bodies[member.id] = (cached if cached is not None and cached[0] is member
                                 else (member, json.dumps(member.to_json()).encode()))
        body = b"[" + b", ".join(encoded for _, encoded in bodies.values()) + b"]\n"
        self._member_bodies, self._members_body = bodies, (members, body)
        return body

    def subscribe(self, maxsize: int) -> Subscription:
        return self.feed.subscribe(maxsize)

    # --- commands (the agent's loop) ------------------------------------------------

    async def set_tags(self, tags: Mapping[str, str], unset: Iterable[str] = ()) -> Mapping[str, str]:
        """Set and unset tags: a newer signed node record, pushed at once and persisted."""
        engine = self._running()
        with self._lock:   # the gossip thread replaces `info` when it refutes a claim
            current = dict(engine.info.tags)
            merged = merge_tags(current, tags, unset)
            if merged != current:
                engine.set_tags(merged, time.monotonic(), wall_ms())
        if merged != current:
            self._after_input()
            await self._save_state()
        return MappingProxyType(merged)

    async def join(self, seeds: Sequence[Endpoint]) -> None:
        """Say hello to more seeds (the cluster is joined once one answers)."""
        engine = self._running()
        with self._lock:
            engine.join([seed.sockaddr for seed in seeds], time.monotonic(), wall_ms())
        self._after_input()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status(self._running())

    def _status(self, engine: Gossip) -> dict[str, Any]:
        own = self._members[0]
        counts = collections.Counter(member.state for member in self._members)
        stats = engine.stats
        return {
            "name": own.name, "id": own.id, "state": own.state, "incarnation": own.incarnation,
            "listen": str(self.config.gossip.listen), "advertise": str(advertised(self.config.gossip)),
            "profile": self.config.gossip.profile,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "members": {state: counts[state] for state in STATES},
            "table": {"records": len(engine.table), "hash": engine.table.table_hash.hex()},
            "gossip": {"queued_broadcasts": engine.queued_broadcasts,
                       "awareness": engine.awareness},
            "udp": {"sent": stats.sent_datagrams, "received": stats.received_datagrams,
                    "bytes_sent": stats.sent_bytes, "bytes_received": stats.received_bytes},
            "tcp": {key: self._tcp[key] for key in ("frames_sent", "frames_received",
                                                    "bytes_sent", "bytes_received")},
            "syncs": dict(sorted(self._syncs.items())),
            "dropped": dict(sorted(self._all_dropped().items())),
        }

    def _running(self) -> Gossip:
        if self._engine is None or self._group is None:
            raise UsageError("the agent is not running")
        return self._engine

    def _loaded(self) -> Gossip:
        """The engine, from start-up on (before the tasks run)."""
        assert self._engine is not None, "run() has not started"
        return self._engine

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, ready: asyncio.Event | None, stop: asyncio.Event) -> None:
        """Start, set `ready`, serve until `stop` is set, leave gracefully, return."""
        if self._engine is not None:
            raise UsageError("an Agent runs once; make a new one")
        self._loop = asyncio.get_running_loop()
        self._state_dir = statefile.prepare(self.config.state_dir)
        self._saved = await asyncio.to_thread(statefile.load, self._state_dir)
        engine = self._engine = build_engine(self.config, self._saved, random.SystemRandom(),
                                             wall_ms())
        try:
            async with contextlib.AsyncExitStack() as stack:
                servers = await self._bind(stack)
                self._started = time.monotonic()
                engine.start(self._started, wall_ms())
                self._refresh_members(wall_ms())
                await self._save_state()
                if self.config.gossip.seeds:
                    engine.join([seed.sockaddr for seed in self.config.gossip.seeds],
                                time.monotonic(), wall_ms())
                await self._serve(servers, ready, stop)
        finally:
            self._group = None
            self.feed.close()
        log.info("agent stopped name=%s", self.config.name)

    async def _serve(self, servers: list[tuple[str, serve.Listener, asyncio.Server]],
                     ready: asyncio.Event | None, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._run_pump(), name="gossip.pump")
                group.create_task(self._state_writer(), name="state")
                for name, listener, server in servers:
                    group.create_task(listener.serve(server, group), name=name)
                    await server.start_serving()   # accepting once `ready` says so
                self._after_input()
                log.info("agent ready name=%s id=%s listen=%s profile=%s seeds=%d",
                         self.config.name, self._members[0].id, self.config.gossip.listen,
                         self.config.gossip.profile, len(self.config.gossip.seeds))
                if ready is not None:
                    ready.set()
                await stop.wait()
                await self._leave()
                raise _Shutdown()
        except* _Shutdown:
            pass
        finally:
            self._group = None   # late datagrams and commands now find the agent stopped

    async def _bind(self, stack: contextlib.AsyncExitStack
                    ) -> list[tuple[str, serve.Listener, asyncio.Server]]:
        """Open every socket before anything runs, so a bind failure is a startup error."""
        listen = self.config.gossip.listen
        family = socket.AF_INET6 if listen.host.version == 6 else socket.AF_INET
        sock = stack.enter_context(gossip_socket(family))
        try:
            sock.bind(listen.sockaddr)
        except OSError as exc:
            raise ConfigError(f"gossip.listen: cannot bind UDP {listen}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._sock = sock
        sync = serve.Listener("sync.conn", self._serve_sync, MAX_SYNCS_IN,
                              lambda: self.drop("sync_busy"), self._connection_error,
                              waiting=MAX_SYNCS_WAITING)
        servers = [("sync.server", sync, await self._tcp_server(stack, sync, "gossip.listen", listen))]
        if self.config.metrics is not None:
            site = serve.Listener("metrics.conn", self._serve_metrics, MAX_METRICS_CONNECTIONS,
                                  lambda: self.drop("metrics_busy"), self._connection_error)
            servers.append(("metrics", site, await self._tcp_server(
                stack, site, "metrics.listen", self.config.metrics.listen)))
        if self._serve_control:
            servers.append(await self._control_server(stack))
        return servers

    async def _tcp_server(self, stack: contextlib.AsyncExitStack, listener: serve.Listener,
                          key: str, endpoint: Endpoint) -> asyncio.Server:
        try:
            server = await asyncio.start_server(listener.accept, *endpoint.sockaddr,
                                                start_serving=False)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot listen on TCP {endpoint}: {exc.strerror or exc}") from None
        stack.callback(server.close)
        return server

    async def _control_server(self, stack: contextlib.AsyncExitStack
                              ) -> tuple[str, serve.Listener, asyncio.Server]:
        handler = control.Control(self).handle

        async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve.http_exchange(reader, writer, handler, control.MAX_BODY_BYTES)

        path = self.config.control_socket
        site = serve.Listener("control.conn", exchange, control.MAX_CONNECTIONS,
                              lambda: self.drop("control_busy"), self._connection_error)
        server = await control.bind(path, site.accept)
        stack.callback(control.unlink, path, control.inode(path))
        stack.callback(server.close)
        return "control", site, server

    async def _leave(self) -> None:
        """Publish and push the `left` record, then give it a bounded moment to leave."""
        engine = self._running()
        with self._lock:
            engine.leave(time.monotonic(), wall_ms())
            pending = engine.datagrams_to_send()
        tries = int(LEAVE_DRAIN_S / LEAVE_POLL_S)
        for attempt in range(1, tries + 1):
            # Datagrams the kernel had no room for are tried again, a bounded number of times.
            pending = self._send(pending, last_try=attempt == tries)
            if not pending:
                break
            await asyncio.sleep(LEAVE_POLL_S)
        self._flush()
        await self._save_state()
        log.info("left the cluster name=%s incarnation=%d", self.config.name, engine.clock.last)

    # --- tasks ----------------------------------------------------------------------

    async def _run_pump(self) -> None:
        """Owns the gossip thread: it runs exactly as long as this task, and its failure
        ends the agent."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not exited.done():
                if error is None:
                    exited.set_result(None)
                else:
                    exited.set_exception(error)

        assert self._sock is not None
        pump = DatagramPump(
            self._sock, self._loaded(), self._lock, wants_shell=self._wants_shell,
            on_output=lambda: self._call_soon(self._flush),
            on_exit=lambda error: self._call_soon(settle, error), drop=self.drop)
        pump.start()
        self._pump = pump
        try:
            await exited
        finally:
            self._pump = None
            await asyncio.to_thread(pump.stop)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """From the gossip thread: run `callback` on the loop (unless the loop is gone)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass   # the loop closed: the agent is gone, and so is whoever wanted to know

    def _wants_shell(self) -> bool:
        """On the gossip thread, under the lock: is there work for `_flush`?"""
        engine = self._loaded()
        return engine.has_output() or engine.clock.last != self._snapshot_version

    async def _state_writer(self) -> None:
        while True:
            await self._state_kick.wait()
            self._state_kick.clear()
            await self._save_state()

    async def _save_state(self) -> None:
        """Persist the last version and the tags if they changed (the file write off the loop)."""
        engine = self._loaded()
        async with self._save_lock:
            with self._lock:
                current = statefile.State(engine.clock.last,
                                          MappingProxyType(dict(engine.info.tags)))
            if current == self._saved:
                return
            try:
                await asyncio.to_thread(statefile.save, self._state_dir, current)
            except KeyFileError as exc:
                log.warning("cannot save state dir=%s error=%s", self._state_dir, exc)
                return
            self._saved = current

    # --- receiving and flushing -------------------------------------------------------

    def _after_input(self) -> None:
        """After the loop changed the engine: flush, and wake the gossip thread if the
        engine's deadline moved sooner."""
        self._flush()
        if self._pump is not None:
            self._pump.reschedule()

    def _flush(self) -> None:
        """Send what the engine queued, publish its events, start the syncs it asks for."""
        if self._group is None:
            return   # stopped: late calls from the gossip thread find nothing to do
        engine = self._running()
        now_ms = wall_ms()
        with self._lock:
            # Until the gossip thread runs, what the engine queued waits for it (it sends
            # the outbox as it starts): a seed's hello queued at start-up is not lost.
            datagrams = engine.datagrams_to_send() if self._pump is not None else []
            pending = []
            while (event := engine.next_event()) is not None:
                if isinstance(event, engine_events.MemberEvent):
                    pending.append(event)
            if pending or engine.clock.last != self._snapshot_version:
                self._refresh_members(now_ms, {event.node_id: event.wall_ms for event in pending})
            syncs = engine.syncs_to_start()
            version = engine.clock.last
        self._send(datagrams)
        self._publish(pending)
        for peer, addr in syncs:
            self._start_sync(peer, addr)
        if version != self._saved.version:
            self._state_kick.set()

    def _send(self, datagrams: list[tuple[bytes, tuple[str, int]]], *, last_try: bool = True
              ) -> list[tuple[bytes, tuple[str, int]]]:
        """Send from the loop; returns what the kernel had no room for."""
        if self._pump is None or not datagrams:
            return []
        return self._pump.send(datagrams, last_try=last_try)

    def _publish(self, pending: list[engine_events.MemberEvent]) -> None:
        for event in pending:
            public = self._public_event(event)
            if public is None:
                continue
            level = logging.INFO if isinstance(public, NOTABLE_EVENTS) else logging.DEBUG
            log.log(level, "member event=%s name=%s incarnation=%d", public.kind,
                    public.member.name, public.member.incarnation)
            self.feed.publish(public)

    def _refresh_members(self, now_ms: int, learned: Mapping[bytes, int] = MappingProxyType({})
                         ) -> None:
        """Rebuild the snapshot `members()` returns (a new tuple: readers on other threads
        always see a whole one). A member that has not changed keeps its `since_ms`; one
        that has gets the stamp of its latest engine event in `learned`, else `now_ms`.
        Under the lock."""
        engine = self._loaded()
        own = engine.table.node(engine.node_id)
        version = own.version if own is not None else 0
        views = {engine.node_id: member_view(engine.node_id, engine.info.name,
                                             LEFT if engine.left else ALIVE, version,
                                             engine.info, learned.get(engine.node_id, now_ms))}
        for m in engine.members.values():
            record = engine.table.node(m.node_id)
            info = record.info if record is not None else None
            views[m.node_id] = member_view(m.node_id, m.name, m.state, m.incarnation,
                                           info if isinstance(info, NodeInfo) else None,
                                           learned.get(m.node_id, now_ms))
        current: dict[bytes, Member] = {}
        for node, view in views.items():
            before = self._current.get(node)
            current[node] = before if before == view else view
        self._current = current
        self._snapshot_version = engine.clock.last
        others = sorted((m for node, m in current.items() if node != engine.node_id),
                        key=lambda m: (m.name, m.id))
        self._members = (current[engine.node_id], *others)

    def _public_event(self, event: engine_events.MemberEvent) -> MemberEvent | None:
        """The public event for an engine event, with the member as it stood then.

        An update that leaves the tags as they were is no event for users.
        """
        known = self._known.get(event.node_id)
        base = self._current.get(event.node_id, known)
        if base is None:
            return None
        if isinstance(event, engine_events.MemberUpdated):
            tags = MappingProxyType(dict(event.tags))
            if known is not None and known.tags == tags:
                self._known[event.node_id] = dataclasses.replace(known, incarnation=event.incarnation)
                return None
            kind: type[MemberEvent] = MemberTagsChanged
            member = dataclasses.replace(base, state=(known or base).state, tags=tags,
                                         incarnation=event.incarnation, since_ms=event.wall_ms)
        else:
            kind, state = STATE_EVENTS[type(event)]
            member = dataclasses.replace(base, state=state or (known or base).state,
                                         incarnation=event.incarnation, since_ms=event.wall_ms)
        if kind is MemberReaped:
            self._known.pop(event.node_id, None)
        else:
            self._known[event.node_id] = member
        return kind(member, event.wall_ms)

    # --- push-pull over TCP ---------------------------------------------------------

    def _start_sync(self, peer: bytes, addr: tuple[str, int]) -> None:
        if self._group is None or self._syncs_out >= MAX_SYNCS_OUT:
            self.drop("sync_busy")
            return
        self._syncs_out += 1
        self._group.create_task(self._sync_out(peer, addr), name="sync.out")

    async def _sync_out(self, peer: bytes, addr: tuple[str, int]) -> None:
        async def exchange() -> None:
            listen = self.config.gossip.listen
            local = None if listen.host.is_unspecified else (str(listen.host), 0)
            reader, writer = await asyncio.open_connection(*addr, local_addr=local)
            try:
                with self._lock:
                    session, first = self._running().open_sync(peer)
                await self._exchange(session, [first], reader, writer)
            finally:
                await serve.close_writer(writer)

        try:
            await self._guard_sync("out", exchange())
        finally:
            self._syncs_out -= 1

    async def _serve_sync(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            session = self._running().accept_sync()
        await self._guard_sync("in", self._exchange(session, [], reader, writer))

    async def _guard_sync(self, direction: str, work: Awaitable[None]) -> None:
        """Run one push-pull, bounded in time; whatever goes wrong is counted, not raised."""
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await work
        except MeshdError as exc:
            reason = getattr(exc, "reason", "local_error")
        except TimeoutError:
            reason = "sync_timeout"
        except (OSError, EOFError):
            reason = "sync_io"
        else:
            self._syncs[f"{direction}_ok"] += 1
            return
        self._syncs[f"{direction}_failed"] += 1
        self._dropped[reason] += 1

    async def _exchange(self, session: SyncSession, frames: list[bytes],
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write our frames, then answer each frame read until the session is done."""
        self._write_frames(writer, frames)
        await writer.drain()
        while not session.done:
            # Until its first frame's MAC checks out, the peer is anyone who can connect:
            # it may not make us buffer more than an opening frame needs.
            limit = wire.MAX_STREAM_FRAME_BYTES if session.peer else MAX_OPENING_FRAME_BYTES
            frame = await self._read_frame(reader, limit)
            await self._warm(session, frame)
            with self._lock:
                replies = session.receive(frame, time.monotonic(), wall_ms())
            self._after_input()
            self._write_frames(writer, replies)
            await writer.drain()

    async def _warm(self, session: SyncSession, frame: bytes) -> None:
        """Verify a delta's records before taking the lock that merges them (see
        `Table.warm`). A very large delta is checked on a worker thread: it is tens of ms
        of CPU the loop would otherwise spend unable to serve anyone, and libsodium
        releases the GIL, so on a host with an idle core the checks run beside it.
        The session is this coroutine's alone, and `warm` only fills caches that are
        safe to fill from any thread."""
        if len(frame) < WARM_OFF_LOOP_BYTES:
            self._warm_now(session, frame)
        else:
            await asyncio.to_thread(self._warm_now, session, frame)

    def _warm_now(self, session: SyncSession, frame: bytes) -> None:
        """A bad frame is left for `receive` to refuse and count."""
        with contextlib.suppress(MeshdError):
            records = session.peek_records(frame)
            if records:
                self._loaded().table.warm(records, wall_ms())

    async def _read_frame(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
        if not 0 < size <= limit:
            raise TooLargeError(f"stream frame of {size} bytes")
        frame = await reader.readexactly(size)
        self._tcp["frames_received"] += 1
        self._tcp["bytes_received"] += FRAME_HEADER.size + size
        return frame

    def _write_frames(self, writer: asyncio.StreamWriter, frames: list[bytes]) -> None:
        for frame in frames:
            writer.writelines([FRAME_HEADER.pack(len(frame)), frame])
            self._tcp["frames_sent"] += 1
            self._tcp["bytes_sent"] += FRAME_HEADER.size + len(frame)

    # --- errors and metrics ---------------------------------------------------------

    def drop(self, reason: str, exc: BaseException | None = None) -> None:
        """Count something a peer or a socket cost us; details only at DEBUG. Any thread."""
        with self._lock:
            self._dropped[reason] += 1
        if exc is not None:
            log.debug("dropped reason=%s error=%r", reason, exc, exc_info=reason == "internal")

    def _connection_error(self, exc: BaseException) -> None:
        self.drop("timeout" if isinstance(exc, TimeoutError) else "internal", exc)

    def _all_dropped(self) -> collections.Counter[str]:
        with self._lock:
            return self._loaded().stats.dropped + self._dropped

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve.http_exchange(reader, writer, self._metrics_reply, METRICS_MAX_BODY_BYTES)

    async def _metrics_reply(self, request: serve.Request) -> serve.Reply:
        if request.path != "/metrics":
            return serve.json_error(404, "not_found", "metrics are at /metrics")
        with self._lock:
            families = self._metric_families()
        text = metrics.exposition(families)
        return serve.Reply(200, text.encode(), metrics.CONTENT_TYPE)

    def _metric_families(self) -> list[metrics.Family]:
        engine = self._running()
        stats = engine.stats
        counts = collections.Counter(member.state for member in self._members)
        C, G = metrics.COUNTER, metrics.GAUGE

        def per_transport(name: str, help: str, udp: int, tcp: int) -> metrics.Family:
            return metrics.Family.by_label(name, C, help, "transport", {"udp": udp, "tcp": tcp})

        return [
            metrics.Family.by_label("meshd_dropped_total", C, "Input dropped, by reason.",
                                    "reason", self._all_dropped()),
            per_transport("meshd_messages_sent_total", "Datagrams and stream frames sent.",
                          stats.sent_datagrams, self._tcp["frames_sent"]),
            per_transport("meshd_messages_received_total", "Datagrams and stream frames received.",
                          stats.received_datagrams, self._tcp["frames_received"]),
            per_transport("meshd_bytes_sent_total", "Bytes sent.",
                          stats.sent_bytes, self._tcp["bytes_sent"]),
            per_transport("meshd_bytes_received_total", "Bytes received.",
                          stats.received_bytes, self._tcp["bytes_received"]),
            metrics.Family.by_label("meshd_members", G, "Members by state, this node included.",
                                    "state", {state: counts[state] for state in STATES}),
            metrics.Family.by_label("meshd_syncs_total", C, "Push-pull exchanges by direction "
                                    "and result.", "result", self._syncs),
            metrics.Family.single("meshd_table_records", G, "Records in the mesh table.",
                                  len(engine.table)),
            metrics.Family.single("meshd_incarnation", G, "This node's record version.",
                                  engine.clock.last),
        ]

