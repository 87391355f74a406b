"""bench/peers/meshd_mirror.py: the member list the benchmark reads, kept from events.

The benchmark's figures stand on it, so it is checked against real agents: it must show
what `/v1/members` shows, follow changes without polling, and fail loudly once its agent
has gone rather than keep answering with a frozen list.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import meshd
from meshd.client import Client
from tests.agent.cluster import Cluster

# Import the benchmark's modules the way the benchmark scripts do (`bench/` on the path,
# package `peers`), not as `bench.peers`: one file under two module names is an error to
# mypy, which checks `bench` and `tests` in one run.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from peers.common import AgentError, Status  # noqa: E402
from peers.meshd_mirror import Mirror  # noqa: E402

IPS = ["127.0.0.94", "127.0.0.95"]
WAIT_S = 20.0


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll the mirror (which costs the agent nothing) until `check()` holds."""
    for _ in range(int(WAIT_S / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the mirror never showed {what}")


async def test_the_mirror_follows_joins_tags_and_leaves_then_reports_its_agent_gone(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, IPS)
    first = cluster.node(1)
    second = cluster.node(2, seeds=[first])
    config = meshd.load_config(first.config)
    client = Client(config.control_socket)
    mirror = Mirror(config.control_socket, lambda: asyncio.to_thread(client.members))
    async with meshd.Node(config, control_socket=True) as a:
        await mirror.start(5.0)
        try:
            assert set(mirror.view()) == {"n1"}
            async with meshd.Node(meshd.load_config(second.config)) as b:
                await until(lambda: "n2" in mirror.view(), "n2 joined")
                joined = mirror.view()["n2"]
                assert joined.status is Status.ALIVE and joined.since is not None
                await b.set_tags({"role": "db"})
                await until(lambda: mirror.view()["n2"].tags == {"role": "db"}, "n2's tag")
                tagged = mirror.view()["n2"]
                assert tagged.since is not None and tagged.since >= joined.since
            await until(lambda: mirror.view()["n2"].status is Status.LEFT, "n2 left")
            await a.set_tags({"zone": "a"})   # no event about itself: a resync shows it
            await mirror.resync()
            assert mirror.view()["n1"].tags == {"zone": "a"}
            listed = await asyncio.to_thread(client.members)
            assert {m["name"] for m in listed} == set(mirror.view())
        except BaseException:
            await mirror.stop()
            raise
    await until(lambda: _gone(mirror), "the stream's end")
    with pytest.raises(AgentError, match="ended|broke"):
        mirror.view()
    await mirror.stop()


def _gone(mirror: Mirror) -> bool:
    try:
        mirror.view()
    except AgentError:
        return True
    return False
