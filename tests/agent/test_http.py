"""The control socket's HTTP: routes, error shapes and bounds, over a real Unix socket.

A fake agent stands behind the routes, so these tests need no gossip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping, Sequence

import pytest

from meshd import control, metrics, serve
from meshd.agent import merge_tags
from meshd.config import Endpoint
from meshd.events import EventFeed, Member, MemberJoined, Subscription


class FakeAgent:
    def __init__(self) -> None:
        self.feed = EventFeed()
        self.tags: dict[str, str] = {}
        self.seeds: list[Endpoint] = []

    def members_json(self) -> bytes:
        return b'[{"name": "n1"}]\n'

    def status(self) -> dict[str, Any]:
        return {"name": "n1"}

    def subscribe(self, maxsize: int) -> Subscription:
        return self.feed.subscribe(maxsize)

    async def set_tags(self, tags: Mapping[str, str], unset: Iterable[str]) -> Mapping[str, str]:
        self.tags = merge_tags(self.tags, tags, unset)
        return self.tags

    async def join(self, seeds: Sequence[Endpoint]) -> None:
        self.seeds = list(seeds)


#: What `served` yields: the control socket's path, the agent behind it, and the errors
#: the listener reported.
Served = tuple[Path, FakeAgent, list[BaseException]]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    agent = FakeAgent()
    errors: list[BaseException] = []
    handler = control.Control(agent).handle

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve.http_exchange(reader, writer, handler, control.MAX_BODY_BYTES)

    listener = serve.Listener("control.conn", exchange, 2, lambda: None, errors.append)
    path = tmp_path / "c.sock"
    server = await control.bind(path, listener.accept)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(listener.serve(server, group))
        yield path, agent, errors
        task.cancel()


async def raw(path: Path, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer: (status, headers, body)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def request(method: str, target: str, body: bytes = b"") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: meshd\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


async def test_routes_answer_json(served: Served) -> None:
    path, agent, _ = served
    status, headers, body = await raw(path, request("GET", "/v1/members"))
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == [{"name": "n1"}]
    status, _, body = await raw(path, request("PUT", "/v1/tags", b'{"set": {"a": "1"}}'))
    assert (status, json.loads(body)) == (200, {"tags": {"a": "1"}})
    status, _, body = await raw(path, request("POST", "/v1/join", b'{"seeds": ["10.0.0.2:7946"]}'))
    assert status == 200 and agent.seeds == [Endpoint.parse("10.0.0.2:7946")]


@pytest.mark.parametrize("data,status,code", [
    (request("GET", "/v2/members"), 404, "not_found"),
    (request("DELETE", "/v1/members"), 405, "method_not_allowed"),
    (request("PUT", "/v1/tags", b"{not json"), 400, "invalid_argument"),
    (request("PUT", "/v1/tags", b'{"set": {"": "x"}}'), 400, "invalid_argument"),
    (request("PUT", "/v1/tags", b'["a"]'), 400, "invalid_argument"),
    (request("POST", "/v1/join", b'{"seeds": ["nohost"]}'), 400, "invalid_argument"),
    (request("PUT", "/v1/tags", b"x" * (control.MAX_BODY_BYTES + 1)), 413, "bad_request"),
    (b"NONSENSE\r\n\r\n", 400, "bad_request"),
    (b"GET /v1/members HTTP/1.1\r\nHost: m\r\nX: " + b"y" * 4 * serve.MAX_HEAD_BYTES + b"\r\n\r\n",
     431, "bad_request"),
])
async def test_bad_requests_get_an_error_object_and_status(served: Served, data: bytes, status: int,
                                                           code: str) -> None:
    got_status, headers, body = await raw(served[0], data)
    assert (got_status, error_code(body)) == (status, code)
    assert headers["content-type"] == "application/json"


async def test_watch_streams_json_lines(served: Served) -> None:
    path, agent, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request("GET", "/v1/watch"))
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")  # sent once the subscription exists
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
        agent.feed.publish(MemberJoined(Member("n2", "id2", "alive", 1), 7))
        await reader.readline()  # the chunk's size
        line = json.loads(await reader.readline())
    assert line["event"] == "joined" and line["member"]["name"] == "n2"
    writer.close()


async def test_a_departed_watcher_frees_its_slot_without_any_event(served: Served) -> None:
    """The server notices a watch client leave at once (not at its next event or a
    timer): both slots held by watches are free again for a plain request."""
    path = served[0]
    watchers = []
    for _ in range(2):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(request("GET", "/v1/watch"))
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\n")
        watchers.append(writer)
    for writer in watchers:
        writer.close()
    for _ in range(50):   # 1 s: noticed by the read, not by a periodic check
        with contextlib.suppress(ConnectionResetError, ValueError):
            if (await raw(path, request("GET", "/v1/status")))[0] == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("departed watchers kept their slots")


async def test_connections_beyond_the_limit_are_refused(served: Served) -> None:
    path = served[0]
    idle = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, _ = await asyncio.open_unix_connection(str(path))
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""  # closed at once, unanswered
    for _, writer in idle:
        writer.close()
    for _ in range(100):  # the slots free up once the server sees the idle ones close
        with contextlib.suppress(ConnectionResetError, ValueError):
            if (await raw(path, request("GET", "/v1/status")))[0] == 200:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the freed slots were never reused")


async def test_a_burst_beyond_the_limit_waits_for_a_slot_and_only_the_rest_is_refused(
        tmp_path: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()

    refused: list[None] = []
    listener = serve.Listener("echo.conn", echo, 1, lambda: refused.append(None), print, waiting=1)
    path = tmp_path / "e.sock"
    server = await asyncio.start_unix_server(listener.accept, str(path), start_serving=False)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(listener.serve(server, group))
        for _ in range(100):
            if server.is_serving():
                break
            await asyncio.sleep(0.01)
        first, second, third = [await asyncio.open_unix_connection(str(path)) for _ in range(3)]
        async with asyncio.timeout(5):
            assert await third[0].read() == b""            # beyond limit + waiting: closed
            second[1].write(b"two\n")
            first[1].write(b"one\n")
            assert await first[0].readline() == b"one\n"
            assert await second[0].readline() == b"two\n"  # served once the first ended
        assert len(refused) == 1
        for _, writer in (first, second, third):
            writer.close()
        task.cancel()


def test_metrics_text_format() -> None:
    text = metrics.exposition([
        metrics.Family.by_label("meshd_dropped_total", metrics.COUNTER, "Dropped.", "reason",
                                {"malformed": 2, 'we"ird': 1}),
        metrics.Family.single("meshd_table_records", metrics.GAUGE, "Records.", 3.5),
    ])
    assert text.splitlines() == [
        "# HELP meshd_dropped_total Dropped.",
        "# TYPE meshd_dropped_total counter",
        'meshd_dropped_total{reason="malformed"} 2',
        'meshd_dropped_total{reason="we\\"ird"} 1',
        "# HELP meshd_table_records Records.",
        "# TYPE meshd_table_records gauge",
        "meshd_table_records 3.5",
    ]

