"""Stream servers for the agent: bounded accepting, and one small HTTP/1.1 exchange.

`Listener` turns an `asyncio.Server`'s connections into tasks of the agent's
`TaskGroup` (no task outlives the agent), at most `limit` at once; up to
`waiting` more wait for a slot (a burst is served late rather than refused),
and a connection beyond those is closed at once and counted. Whatever one
connection raises is reported to `on_error` and ends that connection only.

`http_exchange` serves one request per connection with h11 (the sans-IO
HTTP/1.1 parser), bounded in head size, body size and time, and answers
`Connection: close`. Handlers return a `Reply`, or a `StreamReply` whose
chunks are written as they come (chunked for HTTP/1.1 clients) until the
source ends or the client closes its side.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Awaitable, Callable

import h11

MAX_HEAD_BYTES = 16 * 1024
READ_CHUNK_BYTES = MAX_HEAD_BYTES  # h11 checks its bound between reads
REQUEST_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0
JSON = "application/json"

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """Runs each accepted connection as a task of `group`, at most `limit` at once
    and `waiting` more queued for a slot."""

    def __init__(self, name: str, handler: ConnectionHandler, limit: int,
                 on_refused: Callable[[], None], on_error: Callable[[BaseException], None],
                 waiting: int = 0) -> None:
        self.name = name
        self._handler = handler
        self._slots = asyncio.Semaphore(limit)
        self._capacity = limit + waiting
        self._admitted = 0
        self._on_refused = on_refused
        self._on_error = on_error
        self._group: asyncio.TaskGroup | None = None

    async def serve(self, server: asyncio.Server, group: asyncio.TaskGroup) -> None:
        """Accept on `server` (bound with `start_serving=False`) until cancelled."""
        self._group = group
        async with server:
            await server.serve_forever()

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server's connection callback: hand the connection to the group, or refuse it."""
        if self._group is None or self._admitted >= self._capacity:
            self._on_refused()
            writer.close()
            return
        self._admitted += 1
        self._group.create_task(self._run(reader, writer), name=f"{self.name}.conn")

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with self._slots:
                await self._handler(reader, writer)
        except Exception as exc:  # one connection's failure must never end the agent
            self._on_error(exc)
        finally:
            self._admitted -= 1
            await close_writer(writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream, waiting (bounded) for the transport to let go."""
    writer.close()
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)


# --- HTTP ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A response written chunk by chunk until `chunks` ends or the client goes."""

    chunks: AsyncGenerator[bytes, None]
    content_type: str = "application/x-ndjson"


HttpHandler = Callable[[Request], Awaitable[Reply | StreamReply]]


def json_reply(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps(body).encode() + b"\n", JSON, headers)


def json_error(status: int, code: str, message: str,
               headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """The one error shape of every meshd HTTP endpoint."""
    return json_reply(status, {"error": {"code": code, "message": message}}, headers)


class _Gone(Exception):
    """The client closed the connection before finishing its request."""


async def http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        handler: HttpHandler, max_body_bytes: int) -> None:
    """Read one request, answer it, close."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            request = await _read_request(conn, reader, writer, max_body_bytes)
            reply = await handler(request)
            if isinstance(reply, Reply):
                await _send_reply(conn, writer, reply)
                return
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _send_reply(conn, writer, json_error(exc.error_status_hint, "bad_request",
                                                       str(exc) or "malformed HTTP request"))
        return
    except _Gone:
        return
    await _send_stream(conn, reader, writer, reply)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, max_body_bytes: int) -> Request:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                _write(conn, writer, h11.InformationalResponse(status_code=100, headers=[]))
            conn.receive_data(await reader.read(READ_CHUNK_BYTES))
        elif isinstance(event, h11.Request):
            head = event
            _check_length(event, max_body_bytes)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body_bytes:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            path = head.target.decode("ascii", "replace").partition("?")[0]
            return Request(head.method.decode("ascii", "replace"), path, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise _Gone()


def _check_length(request: h11.Request, max_body_bytes: int) -> None:
    for name, value in request.headers:
        if name == b"content-length" and int(value) > max_body_bytes:
            raise h11.RemoteProtocolError("request body too large", error_status_hint=413)


def _write(conn: h11.Connection, writer: asyncio.StreamWriter, *events: Any) -> None:
    for event in events:
        data = conn.send(event)
        if data:
            writer.write(data)


def _head(status: int, content_type: str, extra: tuple[tuple[str, str], ...]) -> h11.Response:
    headers = [("content-type", content_type), ("connection", "close"), *extra]
    return h11.Response(status_code=status, headers=headers,
                        reason=http.HTTPStatus(status).phrase.encode())


async def _send_reply(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
    extra = (("content-length", str(len(reply.body))), *reply.headers)
    _write(conn, writer, _head(reply.status, reply.content_type, extra),
           h11.Data(data=reply.body), h11.EndOfMessage())
    await writer.drain()


async def _send_stream(conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, reply: StreamReply) -> None:
    """Write chunks until the source ends or the client goes.

    A client sends nothing after its request, so the read below returns only when it
    leaves (or breaks protocol): that ends the stream at once, with no timer waking an
    idle one to check.
    """
    _write(conn, writer, _head(200, reply.content_type, ()))
    await writer.drain()
    relay = asyncio.ensure_future(_relay(conn, writer, reply.chunks))
    departed = asyncio.ensure_future(reader.read(1))
    try:
        await asyncio.wait((relay, departed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        departed.cancel()
        relay.cancel()   # the client left, or we are stopping; a no-op if it ended
        await asyncio.gather(departed, return_exceptions=True)
        with contextlib.suppress(asyncio.CancelledError):
            await relay


async def _relay(conn: h11.Connection, writer: asyncio.StreamWriter,
                 chunks: AsyncGenerator[bytes, None]) -> None:
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            _write(conn, writer, h11.Data(data=chunk))
            await writer.drain()
    _write(conn, writer, h11.EndOfMessage())
    await writer.drain()
