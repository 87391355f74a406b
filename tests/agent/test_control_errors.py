"""What operators see when the agent is not there or the input is wrong: one line, non-zero."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from meshd.client import Client, ControlError
from tests.agent.cluster import MESHD, Cluster, members, wait_for

IP = "127.0.0.81"


def meshd(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHD, *map(str, args)], capture_output=True, text=True, timeout=30)


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshd: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("command", [
    ["members"], ["members", "--json"], ["status"], ["watch"], ["tags", "set", "a=b"],
    ["tags", "unset", "a"], ["join", "127.0.0.1:7946"],
])
def test_client_commands_fail_in_one_line_when_no_agent_runs(command: list[str],
                                                            tmp_path: Path) -> None:
    result = meshd(*command, "--socket", tmp_path / "none.sock")
    one_error_line(result, "no agent is listening")
    assert result.returncode == 1


def test_a_file_that_is_not_a_socket_is_named(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("")
    one_error_line(meshd("members", "--socket", path), str(path))


def test_a_socket_nobody_answers_on_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(1)
        with pytest.raises(ControlError, match="no answer within 0.5 s"):
            Client(path, timeout_s=0.5).status()


@pytest.mark.parametrize("args,fragment", [
    (["tags", "set", "novalue"], "expected KEY=VALUE"),
    (["tags", "set", "=v"], "expected KEY=VALUE"),
    (["tags"], "invalid choice"),
    (["members", "--bogus"], "unrecognized"),
])
def test_wrong_input_is_a_usage_error(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = meshd(*args, "--socket", tmp_path / "none.sock")
    one_error_line(result, fragment)
    assert result.returncode == 2


def test_agent_with_a_missing_config_fails_in_one_line(tmp_path: Path) -> None:
    one_error_line(meshd("agent", "--config", tmp_path / "missing.toml"), "cannot read")


def test_agent_refuses_a_subnet_outside_its_certificate(tmp_path: Path) -> None:
    node = Cluster(tmp_path, [IP]).node(1, vpc_grant="10.20.1.0/24", vpc_subnet="10.20.0.0/16")
    one_error_line(meshd("agent", "--config", node.config), "vpc.blue.subnet", "outside")


def test_agent_refuses_a_busy_gossip_port(tmp_path: Path) -> None:
    node = Cluster(tmp_path, [IP]).node(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((IP, node.port))
        one_error_line(meshd("agent", "--config", node.config), "gossip.listen", "cannot bind")


def test_second_agent_on_a_live_control_socket_is_refused(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, [IP, "127.0.0.82"])
    first = cluster.node(1)
    try:
        cluster.start(first)
        wait_for("the first agent's socket", first.socket.exists)
        second = cluster.node(2)
        text = second.config.read_text().replace('control_socket = "meshd.sock"',
                                                 f'control_socket = "{first.socket}"')
        second.config.write_text(text)
        one_error_line(meshd("agent", "--config", second.config), "already listening")
        assert first.socket.exists()
    finally:
        cluster.stop_all()


def test_stale_socket_of_a_crashed_agent_is_replaced(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, [IP])
    node = cluster.node(1)
    with socket.socket(socket.AF_UNIX) as crashed:
        crashed.bind(str(node.socket))  # bound, never listening: what a SIGKILL leaves
    try:
        cluster.start(node)
        wait_for("the agent to answer", lambda: meshd("status", "--socket", node.socket)
                 .returncode == 0)
        assert node.socket.stat().st_mode & 0o777 == 0o660
    finally:
        cluster.stop_all()



def test_an_unauthenticated_stream_may_not_announce_a_big_frame(tmp_path: Path) -> None:
    """Before its first frame's MAC checks out a push-pull peer is anyone: a frame header
    announcing more than an opening frame needs is refused, not buffered."""
    cluster = Cluster(tmp_path, [IP])
    node = cluster.node(1)
    try:
        cluster.start(node)
        wait_for("the agent to answer", lambda: meshd("status", "--socket", node.socket)
                 .returncode == 0)
        with socket.create_connection((IP, node.port), timeout=5) as stream:
            stream.sendall((1 << 20).to_bytes(4, "big") + b"x" * 1024)
            assert stream.recv(1) == b""           # closed on us, nothing answered
        wait_for("the refusal to be counted", lambda: Client(node.socket).status()
                 ["dropped"].get("too_large") == 1)
    finally:
        cluster.stop_all()


def test_a_seed_in_the_config_gets_the_first_hello(tmp_path: Path) -> None:
    """The hello queued at start-up goes out with the first datagrams, not with the retry
    (on `wan`, 3 s later)."""
    cluster = Cluster(tmp_path, [IP, "127.0.0.82"], profile="wan")
    seed = cluster.node(1)
    joiner = cluster.node(2, seeds=[seed])
    try:
        cluster.start(seed)
        wait_for("the seed's socket", seed.socket.exists)
        cluster.start(joiner)
        wait_for("the joiner's socket", joiner.socket.exists)
        took = wait_for("the joiner to know the seed", lambda: len(members(joiner)) == 2)
        assert took < 2.0, f"joined after {took:.1f} s: the first hello was lost"
    finally:
        cluster.stop_all()
