"""Public membership events and their bounded subscriptions.

What `meshd.Node.events()`, `meshd watch` and `GET /v1/watch` deliver: frozen,
past-tense dataclasses, each carrying a snapshot of the member as it stood and
the wall-clock time at which this node learned it. Consumers `match` on type.

Delivery is a fan-out to independent subscriptions. Each holds at most
`maxsize` events; a consumer that falls behind loses the oldest ones and then
reads one `EventsLost(count)` where the gap is, so it can resync from
`members()`. The agent may run on a thread of its own: `push` is thread-safe
and wakes a waiting consumer on the consumer's own event loop, with at most
one pending wake-up per subscription, so a stalled host loop costs a bounded
queue, never an unbounded backlog of callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

DEFAULT_MAXSIZE = 1024
MAX_MAXSIZE = 1 << 20
STATES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it (`members()`, and inside every event)."""

    name: str
    id: str                                   # base64 of the node's Ed25519 public key
    state: str                                # alive | suspect | dead | left
    incarnation: int                          # the version of its signed node record
    addresses: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: When this node learned the member's current state, record and tags (wall-clock ms):
    #: how long a member has been dead, or when an update reached this node, without polling.
    since_ms: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "state": self.state,
                "incarnation": self.incarnation, "addresses": list(self.addresses),
                "tags": dict(self.tags), "since_ms": self.since_ms}


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Something happened to `member`; this node learned it at `wall_ms`."""

    member: Member
    wall_ms: int
    kind: ClassVar[str] = "member"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "wall_ms": self.wall_ms, "member": self.member.to_json()}


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    """A node this one did not know (or had reaped) introduced itself."""

    kind: ClassVar[str] = "joined"


@dataclass(frozen=True, slots=True)
class MemberSuspected(MemberEvent):
    """Someone failed to reach the member; it has a while to refute."""

    kind: ClassVar[str] = "suspect"


@dataclass(frozen=True, slots=True)
class MemberAlive(MemberEvent):
    """A suspected or dead member proved itself alive again."""

    kind: ClassVar[str] = "alive"


@dataclass(frozen=True, slots=True)
class MemberDied(MemberEvent):
    """A suspicion ran out without a refutation: the member is considered dead."""

    kind: ClassVar[str] = "dead"


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    """The member said goodbye with a signed `left` record."""

    kind: ClassVar[str] = "left"


@dataclass(frozen=True, slots=True)
class MemberTagsChanged(MemberEvent):
    """The member published different tags (`member.tags` holds the new ones)."""

    kind: ClassVar[str] = "tags"


@dataclass(frozen=True, slots=True)
class MemberReaped(MemberEvent):
    """A dead or left member was forgotten after the reap time."""

    kind: ClassVar[str] = "reaped"


@dataclass(frozen=True, slots=True)
class EventsLost:
    """This subscription fell behind and `count` older events were dropped."""

    count: int
    kind: ClassVar[str] = "lost"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "count": self.count}


Event = MemberEvent | EventsLost


class Subscription:
    """One consumer's bounded event queue, async-iterable on the loop that created it.

    The iteration ends once the feed is closed (the node stopped) and what was
    queued has been read.
    """

    def __init__(self, maxsize: int, loop: asyncio.AbstractEventLoop) -> None:
        self._maxsize = maxsize
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque[MemberEvent] = collections.deque()
        self._lost = 0
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: MemberEvent) -> None:
        """Queue an event (from any thread), dropping the oldest when full."""
        with self._lock:
            if self._closed:
                return
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self._lost += 1
            self._items.append(event)
            self._wake_locked()

    def close(self) -> None:
        """End the iteration once drained (from any thread)."""
        with self._lock:
            self._closed = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # the consumer's loop is closed: nobody is waiting any more
                pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            with self._lock:
                if self._lost:
                    lost, self._lost = self._lost, 0
                    return EventsLost(lost)
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                waiter = self._waiter = self._loop.create_future()
            await waiter


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a consumer cancelled mid-wait leaves a cancelled future behind
        waiter.set_result(None)


class EventFeed:
    """Fans events out to every live subscription.

    Subscriptions are held weakly: one its consumer dropped without closing
    simply disappears, so abandoned readers never accumulate.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    def subscribe(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new subscription for the calling event loop."""
        if not 1 <= maxsize <= MAX_MAXSIZE:
            raise ValueError(f"maxsize must be 1..{MAX_MAXSIZE}, got {maxsize}")
        subscription = Subscription(maxsize, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                subscription.close()
            else:
                self._subscriptions.add(subscription)
        return subscription

    def publish(self, event: MemberEvent) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.push(event)

    def close(self) -> None:
        """End every subscription, and any made later."""
        with self._lock:
            self._closed = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
