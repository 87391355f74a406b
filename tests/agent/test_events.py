"""Event subscriptions: bounded, drop-oldest with `EventsLost`, safe across threads."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from meshd.events import (
    Event,
    EventFeed,
    EventsLost,
    Member,
    MemberJoined,
    MemberLeft,
    Subscription,
)


def joined(i: int) -> MemberJoined:
    return MemberJoined(Member(f"n{i}", f"id{i}", "alive", i), wall_ms=i)


async def take(subscription: Subscription, count: int) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(5):
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_a_slow_reader_loses_the_oldest_and_is_told_how_many() -> None:
    feed = EventFeed()
    events = feed.subscribe(maxsize=3)
    for i in range(10):
        feed.publish(joined(i))
    got = await take(events, 4)
    assert got[0] == EventsLost(7)
    assert got[1:] == [joined(7), joined(8), joined(9)]


async def test_each_subscription_is_independent() -> None:
    feed = EventFeed()
    small, large = feed.subscribe(maxsize=1), feed.subscribe(maxsize=100)
    for i in range(5):
        feed.publish(joined(i))
    assert await take(small, 2) == [EventsLost(4), joined(4)]
    assert await take(large, 5) == [joined(i) for i in range(5)]


async def test_closing_the_feed_ends_pending_and_later_iterations() -> None:
    feed = EventFeed()
    events = feed.subscribe()
    reader = asyncio.create_task(take(events, 100))
    await asyncio.sleep(0)
    feed.publish(joined(1))
    feed.close()
    assert await asyncio.wait_for(reader, 5) == [joined(1)]
    assert await take(feed.subscribe(), 1) == []


async def test_a_push_from_another_thread_wakes_the_reader() -> None:
    feed = EventFeed()
    events = feed.subscribe()
    reader = asyncio.create_task(take(events, 2))
    await asyncio.sleep(0)

    def push() -> None:
        feed.publish(joined(1))
        feed.publish(MemberLeft(joined(1).member, 2))

    pusher = threading.Thread(target=push)
    pusher.start()
    got = await asyncio.wait_for(reader, 5)
    pusher.join()
    assert [type(e) for e in got] == [MemberJoined, MemberLeft]


async def test_a_cancelled_reader_does_not_break_the_subscription() -> None:
    feed = EventFeed()
    events = feed.subscribe()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await anext(events)
    feed.publish(joined(3))
    assert await take(events, 1) == [joined(3)]


async def test_abandoned_subscriptions_are_not_kept() -> None:
    feed = EventFeed()
    for _ in range(100):
        feed.subscribe()
    gc.collect()
    assert len(feed._subscriptions) == 0


def test_event_json_carries_the_member_and_the_time() -> None:
    assert joined(2).to_json() == {
        "event": "joined", "wall_ms": 2,
        "member": {"name": "n2", "id": "id2", "state": "alive", "incarnation": 2,
                   "addresses": [], "tags": {}, "since_ms": 0}}
    assert EventsLost(3).to_json() == {"event": "lost", "count": 3}
