"""One meshd agent's member list, kept current from its event stream instead of polled.

``meshd watch`` streams one JSON line per membership event, each carrying the member as it
stood and the wall-clock ms at which the agent learned it. A mirror subscribes once, reads a
``/v1/members`` snapshot, then applies events: a poll of the mirror costs the agent nothing.
Polling ``/v1/members`` instead costs each agent CPU on every poll round (encoding the whole
list, an HTTP exchange), and at N=100 the harness's polls competed with the join they timed.

Events that reached the stream before the snapshot was read may be older than it; each
member keeps whichever of the two the agent learned last, by their stamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11

from .common import AgentError, MemberView, Status, View, stamp

READ_BYTES = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024
_STATUS = {"alive": Status.ALIVE, "suspect": Status.SUSPECT, "dead": Status.FAILED,
           "left": Status.LEFT}


def member_view(member: Any) -> tuple[str, MemberView]:
    """A member as ``/v1/members`` and events carry it; raises AgentError if malformed."""
    try:
        return member["name"], MemberView(_STATUS[member["state"]], dict(member["tags"]),
                                          stamp(member["since_ms"]))
    except (KeyError, TypeError) as exc:
        raise AgentError(f"unreadable member {str(member)[:80]!r}") from exc


class Mirror:
    """The member list of the agent behind ``socket_path``, fed by its watch stream."""

    def __init__(self, socket_path: Path, snapshot: Callable[[], Awaitable[list[Any]]]) -> None:
        self._path = socket_path
        self._snapshot = snapshot
        self._members: dict[str, MemberView] = {}
        self._ended: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> None:
        """Subscribe, then read the snapshot: from here on no change is missed."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self._path), limit=MAX_LINE_BYTES), timeout_s)
        conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(h11.Request(method="GET", target="/v1/watch",
                                           headers=[("host", "meshd")])))
        writer.write(conn.send(h11.EndOfMessage()))
        try:
            head = await asyncio.wait_for(_response_head(conn, reader), timeout_s)
            if head.status_code != 200:
                raise AgentError(f"watch answered HTTP {head.status_code}")
            await self.resync()
        except BaseException:
            writer.close()
            raise
        self._task = asyncio.ensure_future(self._follow(conn, reader, writer))

    def view(self) -> View:
        if self._ended is not None:
            raise AgentError(self._ended)
        return dict(self._members)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def resync(self) -> None:
        """Replace the list with a fresh snapshot (events older than it then lose to it).
        An agent publishes no event about itself, so its own changes need one too."""
        self._members = dict(member_view(member) for member in await self._snapshot())

    def _apply(self, name: str, seen: MemberView) -> None:
        held = self._members.get(name)
        if held is None or (seen.since or 0) >= (held.since or 0):
            self._members[name] = seen

    async def _follow(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """Apply events until the stream ends (the agent stopped, or was killed)."""
        pending = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(READ_BYTES))
                elif isinstance(event, h11.Data):
                    *lines, pending = (pending + event.data).split(b"\n")
                    if len(pending) > MAX_LINE_BYTES:
                        raise AgentError("an event line is too long")
                    for line in lines:
                        await self._on_line(line)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    self._ended = "the agent's event stream ended"
                    return
        except (OSError, h11.ProtocolError, AgentError) as exc:
            self._ended = f"the agent's event stream broke: {exc}"
        finally:
            writer.close()

    async def _on_line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise AgentError("an event that is not JSON") from exc
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "lost":            # the agent dropped events for us: read the list anew
            await self.resync()
        elif kind == "reaped":
            self._members.pop(member_view(event.get("member"))[0], None)
        elif kind is not None:
            self._apply(*member_view(event.get("member")))


async def _response_head(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Response:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_BYTES))
        elif isinstance(event, h11.Response):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            raise AgentError("the agent closed the watch before answering")
