"""One kinship node as its own process, for bench/vs_peers.py.

kinship is a library, not a daemon, so the benchmark needs this small program to give each
node its own PID (for kill -9, CPU and RSS) the way ``serf agent`` does. The harness talks to
it over stdin/stdout with one JSON object per line, which needs no port and so adds nothing
to the gossip traffic counters:

    {"id": 1, "op": "ping"}                           -> {"id": 1}
    {"id": 2, "op": "join", "seed": "127.0.1.1:7947"} -> {"id": 2, "answered": 1}
    {"id": 3, "op": "members"}                        -> {"id": 3, "members": [...]}
      (each member: name, state, meta and since_ms, the wall-clock ms at which this node's
      event stream delivered the member's latest change, or null if it did not see one)
    {"id": 4, "op": "meta", "key": "k", "value": "v"} -> {"id": 4}

A failed request answers {"id": N, "error": "..."}. SIGTERM, or the harness closing stdin,
makes the node leave gracefully (kinship waits up to 5 s for the leave to spread) and exit.

Run it with the interpreter that has kinship installed: ``python kinship_agent.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

import kinship

#: Room for a members answer at 254 nodes with tags, well above asyncio's 64 KiB default.
LINE_LIMIT = 1 << 20


def build_config(args: argparse.Namespace) -> kinship.Config:
    """A ``Config.lan()`` node, the same timing profile as Serf's default ("lan")."""
    fields: dict[str, Any] = {"name": args.name, "bind": args.bind, "cluster": args.cluster}
    if args.key:
        fields["keys"] = [args.key]
    else:
        fields["insecure_plaintext"] = True
    return kinship.Config.lan(**fields)


#: Events that change a member's state or meta: the harness times them by their stamps.
MEMBER_EVENTS = (
    kinship.MemberJoined,
    kinship.MemberSuspect,
    kinship.MemberRecovered,
    kinship.MemberDead,
    kinship.MemberLeft,
    kinship.MemberUpdated,
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def member_json(member: kinship.Member, since_ms: int | None) -> dict[str, Any]:
    """A member as the harness reads it: state in lower case, meta as a plain dict."""
    return {
        "name": member.name,
        "state": member.state.name.lower(),
        "meta": dict(member.meta),
        "since_ms": since_ms,
    }


class Agent:
    """Answers the harness's requests for one running cluster node."""

    def __init__(self, cluster: kinship.Cluster) -> None:
        self._cluster = cluster
        # members() lists only alive and suspect nodes; remembering every name seen lets a
        # view also report dead and left members, from member(name), like `serf members`.
        self._known: set[str] = set()
        #: When the event stream delivered each member's latest change. kinship's events carry
        #: no time, so the stamp is taken on delivery: never earlier than the core learned it.
        #: The local node has been what it is since the agent started.
        self._since_ms: dict[str, int] = {cluster.local.name: now_ms()}

    async def stamp_events(self) -> None:
        """Stamps every member event as it arrives. After lost events only the local node's
        stamp is kept (another could predate a lost change): the harness then times those
        members by its polls."""
        local = self._cluster.local.name
        async for event in self._cluster.events():
            if isinstance(event, kinship.EventsLost):
                self._since_ms = {local: self._since_ms[local]}
            elif isinstance(event, MEMBER_EVENTS):
                self._since_ms[event.member.name] = now_ms()

    def members(self) -> list[dict[str, Any]]:
        """Alive and suspect members, plus the dead and left ones kinship still remembers."""
        current = {m.name: m for m in self._cluster.members()}
        self._known.update(current)
        for name in self._known - current.keys():
            tombstone = self._cluster.member(name)
            if tombstone is not None:
                current[name] = tombstone
        return [member_json(m, self._since_ms.get(m.name)) for m in current.values()]

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Runs one request and returns the answer's fields."""
        op = request.get("op")
        if op == "ping":
            return {}
        if op == "members":
            return {"members": self.members()}
        if op == "join":
            return {"answered": await self._cluster.join([request["seed"]])}
        if op == "meta":
            await self._cluster.update_meta(**{request["key"]: request["value"]})
            return {}
        raise ValueError(f"unknown op {op!r}")


async def stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """stdin and stdout as asyncio streams, so a slow harness never blocks the node's loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def answer(agent: Agent, line: bytes) -> dict[str, Any]:
    """The answer to one request line; any failure goes back to the harness as "error"."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"id": None, "error": f"bad request line: {exc}"}
    if not isinstance(request, dict):
        return {"id": None, "error": "a request is a JSON object"}
    try:
        return {"id": request["id"], **await agent.handle(request)}
    except Exception as exc:  # the node must keep serving after a bad request
        return {"id": request.get("id"), "error": repr(exc)}


async def serve(agent: Agent) -> None:
    """Answers requests, one per line, in order, until stdin closes."""
    reader, writer = await stdio_streams()
    while line := await reader.readline():
        writer.write(json.dumps(await answer(agent, line)).encode() + b"\n")
        await writer.drain()


async def run(args: argparse.Namespace) -> None:
    """Runs the node until SIGTERM or the end of stdin, then leaves gracefully."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with kinship.Cluster(build_config(args)) as cluster:
        agent = Agent(cluster)
        tasks = {
            asyncio.create_task(serve(agent)),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(agent.stamp_events()),
        }
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Leaving `async with` leaves the cluster (bounded at 5 s), then closes the node.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=kinship.__version__)
    parser.add_argument("--name", required=True, help="node name, e.g. n3")
    parser.add_argument("--bind", required=True, help="gossip address, e.g. 127.0.1.3:7947")
    parser.add_argument("--cluster", default="meshd-bench", help="cluster label")
    parser.add_argument("--key", help="base64 32-byte key; without it, plaintext")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
