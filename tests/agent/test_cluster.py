"""Ten real agents on loopback, driven only through `meshd` commands and the control socket.

One cluster serves the whole module, and the tests run in file order: the
ones that stop agents (kill -9, SIGTERM) come last. Agents use the `local`
gossip profile so failure detection takes about a second.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.agent.cluster import (
    MESHD,
    Cluster,
    Lines,
    NodeFiles,
    members,
    states,
    wait_for,
)

N = 10
IPS = [f"127.0.0.{100 + i}" for i in range(1, N + 3)]  # two more for embedded nodes
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed.py"
EMBED_S = 10.0

#: The module's cluster and its ten agents' files, n1 (the seed) first.
Ten = tuple[Cluster, list[NodeFiles]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ten]:
    root = tmp_path_factory.mktemp("ten")
    cluster = Cluster(root, IPS)
    metrics_port = cluster.port
    nodes: list[NodeFiles] = []
    for i in range(1, N + 1):
        metrics = f"{IPS[0]}:{metrics_port + 1}" if i == 1 else None
        nodes.append(cluster.node(i, seeds=nodes[:1], metrics=metrics))
    try:
        for node in nodes:
            cluster.start(node)
        yield cluster, nodes
    finally:
        cluster.stop_all()


def live(cluster: Cluster, nodes: list[NodeFiles]) -> list[NodeFiles]:
    return [n for n in nodes if cluster.procs[n.name].poll() is None]


def meshd(*args: str | Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """A real `meshd` process, as an operator would run it."""
    return subprocess.run([*MESHD, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a helper process we started, by its PID, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_ten_agents_join_through_one_seed_and_all_list_ten_alive(cluster: Ten) -> None:
    c, nodes = cluster
    names = {n.name for n in nodes}
    wait_for("every agent to list 10 alive", lambda: all(
        states(n) == dict.fromkeys(names, "alive") for n in nodes), timeout_s=60)
    for node in (nodes[0], nodes[-1]):
        result = meshd("members", "--json", "--socket", node.socket)
        assert result.returncode == 0, result.stderr
        listed = json.loads(result.stdout)
        assert {m["name"] for m in listed} == names
        for member in listed:
            assert {"name", "id", "state", "incarnation", "addresses", "tags"} <= member.keys()
            assert member["state"] == "alive" and member["incarnation"] > 0
        own = next(m for m in listed if m["name"] == node.name)
        assert own["addresses"] == [node.gossip]


def test_human_members_table_lists_everyone(cluster: Ten) -> None:
    _, nodes = cluster
    result = meshd("members", "--socket", nodes[0].socket)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "ADDRESS"]
    assert len(lines) == N + 1


def test_tags_set_on_one_shows_up_at_all(cluster: Ten) -> None:
    c, nodes = cluster
    result = meshd("tags", "set", "role=db", "zone=a", "--socket", nodes[1].socket)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["role=db", "zone=a"]
    wait_for("every agent to see n2's tags", lambda: all(
        members(n).get("n2", {}).get("tags") == {"role": "db", "zone": "a"} for n in nodes))
    result = meshd("tags", "unset", "zone", "--socket", nodes[1].socket, "--json")
    assert json.loads(result.stdout) == {"role": "db"}
    wait_for("every agent to see zone unset", lambda: all(
        members(n).get("n2", {}).get("tags") == {"role": "db"} for n in nodes))


def test_watch_prints_one_json_line_per_event(cluster: Ten) -> None:
    _, nodes = cluster
    watch = subprocess.Popen([*MESHD, "watch", "--json", "--socket", str(nodes[0].socket)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(watch)
    try:
        time.sleep(0.5)  # let the watch subscribe before the change it should see
        assert meshd("tags", "set", "watched=yes", "--socket", nodes[2].socket).returncode == 0
        event = json.loads(lines.until('"watched"')[-1])
        assert event["event"] == "tags"
        assert event["member"]["name"] == "n3" and event["member"]["tags"]["watched"] == "yes"
        assert abs(event["wall_ms"] - time.time() * 1000) < 60_000
    finally:
        stop(watch)


def test_status_and_metrics_report_the_cluster(cluster: Ten) -> None:
    c, nodes = cluster
    status = json.loads(meshd("status", "--json", "--socket", nodes[0].socket).stdout)
    assert status["name"] == "n1" and status["members"]["alive"] == N
    with urllib.request.urlopen(f"http://{IPS[0]}:{c.port + 1}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert f'meshd_members{{state="alive"}} {N}' in text
    assert 'meshd_messages_received_total{transport="udp"}' in text
    assert "# TYPE meshd_dropped_total counter" in text


def test_curl_speaks_to_the_control_socket(cluster: Ten) -> None:
    _, nodes = cluster
    sock = str(nodes[0].socket)
    ok = subprocess.run(["curl", "-sf", "--unix-socket", sock, "http://meshd/v1/members"],
                        capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0 and len(json.loads(ok.stdout)) == N
    missing = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", sock,
                              "http://meshd/v1/nothing"], capture_output=True, text=True,
                             timeout=10)
    body, code = missing.stdout.rsplit("\n", 1)
    assert code == "404" and json.loads(body)["error"]["code"] == "not_found"


BLOCKER = textwrap.dedent("""\
    import asyncio, sys, time
    import meshd

    async def main():
        config = meshd.load_config(sys.argv[1])
        expected, block_s = int(sys.argv[2]), float(sys.argv[3])
        async with meshd.Node(config) as node:
            for _ in range(600):
                if sum(m.state == "alive" for m in node.members()) >= expected:
                    break
                await asyncio.sleep(0.05)
            print("blocking", flush=True)
            time.sleep(block_s)  # the host's loop is stuck; the node's thread is not
            print("unblocked", flush=True)
            await asyncio.sleep(0.5)

    asyncio.run(main())
""")


def test_embedded_node_blocking_its_loop_is_not_declared_dead(cluster: Ten, tmp_path: Path) -> None:
    c, nodes = cluster
    others = live(c, nodes)
    embedded = c.node(N + 1, seeds=[nodes[0]])
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKER)
    host = subprocess.Popen([sys.executable, str(script), str(embedded.config),
                             str(len(others) + 1), str(EMBED_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(host)
    try:
        assert lines.next(30) == "blocking"
        wait_for("every agent to see the embedded node", lambda: all(
            states(n).get(embedded.name) == "alive" for n in others))
        deadline = time.monotonic() + EMBED_S
        seen: set[str] = set()
        for _ in range(int(EMBED_S / 0.2) + 1):
            if time.monotonic() > deadline:
                break
            seen |= {states(n).get(embedded.name, "missing") for n in others}
            time.sleep(0.2)
        assert seen == {"alive"}
        assert lines.next(30) == "unblocked"
        host.wait(timeout=30)
        assert host.stderr is not None   # stderr=PIPE
        err = host.stderr.read()
        assert host.returncode == 0, err
        assert "Traceback" not in err
        wait_for("the embedded node's leave", lambda: all(
            states(n).get(embedded.name) == "left" for n in others))
    finally:
        stop(host)


def test_the_embedding_example_prints_events_and_leaves_on_sigterm(cluster: Ten) -> None:
    c, nodes = cluster
    node = c.node(N + 2, seeds=[nodes[0]])
    example = subprocess.Popen([sys.executable, str(EXAMPLE), "--config", str(node.config),
                                "--tag", "role=example"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(example)
    try:
        assert lines.next(30).startswith(f"node {node.name} is up")
        lines.until("joined")
        wait_for("every agent to see the example's tag", lambda: all(
            members(n).get(node.name, {}).get("tags") == {"role": "example"}
            for n in live(c, nodes)))
        example.send_signal(signal.SIGTERM)
        example.wait(timeout=30)
        assert example.stderr is not None   # stderr=PIPE
        err = example.stderr.read()
        assert example.returncode == 0, err
        assert lines.rest()[-1] == "left the cluster" and "Traceback" not in err
    finally:
        stop(example)


def test_kill_9_is_seen_as_dead_by_all(cluster: Ten) -> None:
    c, nodes = cluster
    victim = nodes[-1]
    c.signal(victim, signal.SIGKILL)
    survivors = [n for n in live(c, nodes) if n != victim]
    wait_for("every survivor to see n10 dead", lambda: all(
        states(n).get(victim.name) == "dead" for n in survivors))


def test_sigterm_leaves_gracefully_and_is_seen_as_left_by_all(cluster: Ten) -> None:
    c, nodes = cluster
    leaver = nodes[-2]
    c.signal(leaver, signal.SIGTERM)
    assert c.wait_exit(leaver) == 0
    assert "Traceback" not in c.log(leaver)
    assert not leaver.socket.exists()
    rest = [n for n in live(c, nodes) if n != leaver]
    wait_for("every agent to see n9 left", lambda: all(
        states(n).get(leaver.name) == "left" for n in rest))
