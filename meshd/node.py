"""`meshd.Node`: the whole membership agent inside another asyncio program.

    async with meshd.Node(config) as node:
        async for event in node.events():
            match event:
                case meshd.MemberDied(member=m): ...

By default the agent runs on a thread of its own with its own event loop, so
a host that blocks its loop for seconds (a slow handler, a `time.sleep` in a
coroutine) does not stop answering probes and is not declared dead. Reads
never wait on the network: `members()` returns the agent's latest immutable
snapshot. Commands (`set_tags`, `join`, `status`) are handed to the agent's
loop and awaited from the host's.

A Node never installs signal handlers and never exits the process. Leaving
the `async with` block, normally, by an exception or by cancellation,
publishes the signed `left` record and stops the agent (bounded in time);
pending `events()` iterations then end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from meshd.agent import Agent
from meshd.config import Config, Endpoint
from meshd.errors import UsageError
from meshd.events import DEFAULT_MAXSIZE, Member, Subscription

START_TIMEOUT_S = 30.0
# Leaving waits at most agent.LEAVE_DRAIN_S for datagrams, plus a state write.
STOP_TIMEOUT_S = 10.0
T = TypeVar("T")


class Node:
    """One mesh node embedded in the calling program (membership-only mode)."""

    def __init__(self, config: Config, *, own_thread: bool = True,
                 control_socket: bool = False) -> None:
        """`own_thread=False` runs the agent on the host's loop instead (cheaper, but a
        blocked host loop then blocks the node too). `control_socket=True` also serves
        `config.control_socket`, so `meshd members --socket ...` works against this node."""
        self.config = config
        self._agent = Agent(config, serve_control=control_socket)
        self._own_thread = own_thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        if self._thread is not None or self._task is not None:
            raise UsageError("a Node is entered once; make a new one")
        if self._own_thread:
            self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                            name=f"meshd-{self.config.name}", daemon=True)
            self._thread.start()
        else:
            self._task = asyncio.get_running_loop().create_task(self._main(), name="meshd.node")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.shield(asyncio.wrap_future(self._ready))  # a start-up error raises
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._shutdown()
        failure = self._done.exception() if self._done.done() else None
        if exc_type is None and failure is not None:
            raise failure

    async def _main(self) -> None:
        """The agent's life on whichever loop runs it; settles `_ready` and `_done`."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping:  # asked to stop before this loop existed
            self._stop.set()
        try:
            await self._agent.run(_ReadyEvent(self._ready), self._stop)
        except BaseException as exc:
            _settle(self._ready, exc)
            _settle(self._done, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            _settle(self._ready, UsageError("the node stopped before it was ready"))
            _settle(self._done, None)

    async def _shutdown(self) -> None:
        """Stop the agent (it leaves gracefully) and wait for it, bounded, even when cancelled."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                loop.call_soon_threadsafe(stop.set)
        try:
            await asyncio.wait([asyncio.wrap_future(self._done)], timeout=STOP_TIMEOUT_S)
        finally:
            if self._thread is not None:
                self._thread.join(STOP_TIMEOUT_S)  # cancelled: still wait for the leave
            if self._task is not None and not self._task.done():
                self._task.cancel()  # on the host's loop, a second cancel cuts the leave short
                await asyncio.wait([self._task], timeout=STOP_TIMEOUT_S)

    # --- reading ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    def members(self) -> tuple[Member, ...]:
        """Every member as this node sees it, itself first; never waits on the network."""
        return self._agent.members()

    def events(self, maxsize: int = DEFAULT_MAXSIZE) -> Subscription:
        """A new, independent, bounded subscription to membership events.

        Iterate it with `async for`; when the consumer falls behind by more than
        `maxsize` events the oldest are dropped and an `EventsLost(count)` comes
        next. The iteration ends when the node stops.
        """
        return self._agent.subscribe(maxsize)

    # --- commands ---------------------------------------------------------------------

    async def set_tags(self, tags: Mapping[str, str], *,
                       unset: Iterable[str] = ()) -> Mapping[str, str]:
        """Set `tags` (others are kept) and remove `unset`; returns the node's tags."""
        return await self._call(lambda: self._agent.set_tags(dict(tags), list(unset)))

    async def join(self, seeds: Sequence[str | Endpoint]) -> None:
        """Say hello to more seeds (`host:port`)."""
        endpoints = [s if isinstance(s, Endpoint) else _endpoint(s) for s in seeds]
        await self._call(lambda: self._agent.join(endpoints))

    async def status(self) -> dict[str, Any]:
        """What `meshd status --json` shows: addresses, counts, counters."""

        async def status() -> dict[str, Any]:
            return self._agent.status()

        return await self._call(status)

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the agent's loop and await its result from this one."""
        loop = self._loop
        if loop is None or self._done.done():
            raise UsageError("the node is not running")
        if loop is asyncio.get_running_loop():
            return await make()
        future = asyncio.run_coroutine_threadsafe(_awaited(make), loop)
        return await asyncio.wrap_future(future)


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


class _ReadyEvent(asyncio.Event):
    """The agent's `ready` event, also reported to the host's thread."""

    def __init__(self, report: concurrent.futures.Future[None]) -> None:
        super().__init__()
        self._report = report

    def set(self) -> None:
        super().set()
        _settle(self._report, None)


def _settle(future: concurrent.futures.Future[None], outcome: BaseException | None) -> None:
    if future.done():
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise UsageError(f"seed {text!r}: {exc}") from None
