"""`meshd.Node` embedded in asyncio programs: events, tags, restarts, clean stops."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TypeVar

import pytest

import meshd
from meshd import agent as agent_module
from meshd.client import Client
from meshd.errors import ConfigError
from meshd.table import Table
from tests.agent.cluster import Cluster, NodeFiles

IPS = ["127.0.0.91", "127.0.0.92", "127.0.0.93", "127.0.0.96"]
EVENT_WAIT_S = 20.0
CYCLES = 50

#: Two nodes' files: n1, and n2 with n1 as its seed.
Pair = tuple[NodeFiles, NodeFiles]
E = TypeVar("E", bound=meshd.MemberEvent)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    cluster = Cluster(tmp_path, IPS)
    first = cluster.node(1)
    return first, cluster.node(2, seeds=[first])


async def next_of(events: meshd.events.Subscription, kind: type[E], name: str) -> E:
    """The next event of `kind` about member `name` (others are skipped), bounded in time."""
    async with asyncio.timeout(EVENT_WAIT_S):
        async for event in events:
            if isinstance(event, kind) and event.member.name == name:
                return event
    raise AssertionError(f"the subscription ended before a {kind.__name__} for {name}")


def member(node: meshd.Node, name: str) -> meshd.Member:
    return next(m for m in node.members() if m.name == name)


@pytest.mark.parametrize("own_thread", [True, False], ids=["own-thread", "host-loop"])
async def test_events_follow_a_peer_joining_tagging_and_leaving(pair: Pair,
                                                                 own_thread: bool) -> None:
    first, second = (meshd.load_config(n.config) for n in pair)
    async with meshd.Node(first, own_thread=own_thread) as a:
        events = a.events()
        async with meshd.Node(second, own_thread=own_thread) as b:
            joined = await next_of(events, meshd.MemberJoined, "n2")
            assert joined.member.state == "alive" and joined.wall_ms > 0
            assert {m.name for m in a.members()} == {"n1", "n2"}
            assert a.members()[0].name == "n1"
            assert member(a, "n2").since_ms == joined.wall_ms
            await a.set_tags({"own": "change"})   # a new snapshot: n2 keeps its stamp
            assert member(a, "n2").since_ms == joined.wall_ms
            assert await b.set_tags({"role": "db"}) == {"role": "db"}
            changed = await next_of(events, meshd.MemberTagsChanged, "n2")
            assert dict(changed.member.tags) == {"role": "db"}
            assert member(a, "n2").since_ms == changed.wall_ms > joined.wall_ms
        left = await next_of(events, meshd.MemberLeft, "n2")
        assert left.member.state == "left"
        status = await a.status()
        assert status["members"]["left"] == 1


async def test_a_cancelled_host_task_still_leaves_gracefully(pair: Pair) -> None:
    first, second = (meshd.load_config(n.config) for n in pair)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    async with meshd.Node(first) as a:
        events = a.events()
        entered = asyncio.Event()

        async def host() -> None:
            async with meshd.Node(second):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(host())
        await next_of(events, meshd.MemberJoined, "n2")
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await next_of(events, meshd.MemberLeft, "n2")).member.state == "left"
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


async def test_tags_and_versions_survive_a_restart(pair: Pair) -> None:
    config = meshd.load_config(pair[0].config)
    async with meshd.Node(config) as node:
        await node.set_tags({"zone": "a", "tmp": "x"}, unset=["nothing"])
        assert await node.set_tags({}, unset=["tmp"]) == {"zone": "a"}
        first = node.members()[0].incarnation
    assert (config.state_dir.stat().st_mode & 0o777) == 0o700
    saved = json.loads((config.state_dir / "state.json").read_text())
    assert saved["tags"] == {"zone": "a"} and saved["version"] > first
    async with meshd.Node(config) as node:
        own = node.members()[0]
        assert dict(own.tags) == {"zone": "a"} and own.incarnation > saved["version"]


async def test_an_embedded_node_may_serve_its_control_socket(pair: Pair) -> None:
    config = meshd.load_config(pair[0].config)
    async with meshd.Node(config, control_socket=True) as node:
        client = Client(config.control_socket)
        listed = await asyncio.to_thread(client.members)
        assert [m["name"] for m in listed] == ["n1"]
        await node.set_tags({"zone": "a"})   # a new snapshot: never the body encoded before
        listed = await asyncio.to_thread(client.members)
        assert listed == [m.to_json() for m in node.members()] and listed[0]["tags"] == {"zone": "a"}
    assert not config.control_socket.exists()


async def test_a_large_sync_delta_is_verified_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """n2 joins n1 and n4, then leaves; once n1 and n4 piggyback nothing more, n3 joins
    through n1 and can learn of n2 only from the join's push-pull delta (n2 is gone, so
    it cannot probe n3 with its own record). With the size floor at zero, the delta's
    checks must run where no event loop is running."""
    monkeypatch.setattr(agent_module, "WARM_OFF_LOOP_BYTES", 0)
    on_loop: list[bool] = []
    warm = Table.warm

    def spy(table: Table, records: list[object], wall_ms: int) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        warm(table, records, wall_ms)

    monkeypatch.setattr(Table, "warm", spy)
    cluster = Cluster(tmp_path, IPS)
    first = cluster.node(1)
    configs = [meshd.load_config(cluster.node(i, seeds=[first]).config) for i in (2, 3, 4)]
    async with meshd.Node(meshd.load_config(first.config)) as a, meshd.Node(configs[2]) as d:
        events = a.events()
        async with meshd.Node(configs[0]):
            await next_of(events, meshd.MemberJoined, "n2")
        await next_of(events, meshd.MemberLeft, "n2")
        async with asyncio.timeout(EVENT_WAIT_S):
            while any([(await node.status())["gossip"]["queued_broadcasts"] for node in (a, d)]):
                await asyncio.sleep(0.05)
        on_loop.clear()     # the earlier joins synced too: only n3's counts
        async with meshd.Node(configs[1]) as c:
            async with asyncio.timeout(EVENT_WAIT_S):
                while {m.name: m.state for m in c.members()}.get("n2") != "left":
                    await asyncio.sleep(0.05)
    assert on_loop and not any(on_loop)


@pytest.mark.parametrize("option, cap", [(socket.SO_RCVBUF, "rmem_max"),
                                         (socket.SO_SNDBUF, "wmem_max")])
def test_the_gossip_socket_has_room_for_a_join_storm(option: int, cap: str) -> None:
    """Linux grants min(asked, the sysctl cap) and reports twice that (its bookkeeping)."""
    limit = int(Path(f"/proc/sys/net/core/{cap}").read_text())
    with agent_module.gossip_socket(socket.AF_INET) as sock:
        granted = sock.getsockopt(socket.SOL_SOCKET, option)
    assert granted == 2 * min(agent_module.UDP_BUFFER_BYTES, limit)


async def test_a_subnet_outside_the_certificate_fails_at_start(tmp_path: Path) -> None:
    node = Cluster(tmp_path, IPS).node(1, vpc_grant="10.20.1.0/24", vpc_subnet="10.21.0.0/24")
    with pytest.raises(ConfigError, match=r"vpc\.blue\.subnet"):
        async with meshd.Node(meshd.load_config(node.config)):
            pass


async def test_bad_tags_are_refused_locally(pair: Pair) -> None:
    async with meshd.Node(meshd.load_config(pair[0].config)) as node:
        with pytest.raises(meshd.UsageError):
            await node.set_tags({"": "x"})
        with pytest.raises(meshd.UsageError):
            await node.set_tags({f"k{i}": "v" for i in range(40)})


CYCLER = textwrap.dedent("""\
    import asyncio, contextlib, sys
    import meshd

    async def drain(events):
        async for _ in events:
            pass

    async def cycle(config, i):
        async with meshd.Node(config, own_thread=i % 4 != 3) as node:
            readers = [asyncio.create_task(drain(node.events())) for _ in range(2)]
            node.events()  # a subscription nobody reads
            await asyncio.sleep(0)
            if i % 2:
                readers[0].cancel()
        for reader in readers:  # a stopped node ends every pending iteration
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reader, 5)

    async def cancelled_inside(config):
        async def body():
            async with meshd.Node(config) as node:
                reader = asyncio.create_task(drain(node.events()))
                await asyncio.sleep(3600)
        task = asyncio.create_task(body())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def main(path, cycles):
        config = meshd.load_config(path)
        for i in range(cycles):
            if i % 10 == 5:
                await cancelled_inside(config)
            else:
                await cycle(config, i)
        print("cycles done", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_fifty_start_stop_cycles_with_pending_readers_exit_cleanly(pair: Pair,
                                                                   tmp_path: Path) -> None:
    script = tmp_path / "cycles.py"
    script.write_text(CYCLER)
    result = subprocess.run([sys.executable, "-X", "dev", str(script), str(pair[0].config),
                             str(CYCLES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "cycles done"
    for marker in ("Traceback", "Task was destroyed", "never awaited", "Exception ignored",
                   "ResourceWarning", "Unclosed"):
        assert marker not in result.stderr, result.stderr[-3000:]
