"""Real agents on loopback for the agent tests: files, processes, polling.

Identity files are made with the `meshd` commands themselves (in-process);
agents run as `python -m meshd agent`, each on its own 127.0.0.x address, and
are killed only by the PIDs started here. Every wait is bounded in rounds
and in time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from meshd import cli
from meshd.config import render_local

MESHD = [sys.executable, "-m", "meshd"]
POLL_S = 0.1
EXIT_WAIT_S = 10.0


def meshd_in_process(*args: str | Path) -> tuple[int, str]:
    """`meshd ARGS` through `cli.main`, stdout captured (stderr left alone)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([str(arg) for arg in args])
    return code, out.getvalue()


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> float:
    """Poll until `predicate()` holds; return the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    for _ in range(int(timeout_s / POLL_S) + 1):
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            break
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def free_port(hosts: list[str]) -> int:
    """A port that is free for both UDP and TCP on every one of `hosts`."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 60_000)
        if all(_free(host, port) for host in hosts):
            return port
    raise RuntimeError("no free port found")


def _free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class Lines:
    """A process's stdout lines, read on a thread so that every wait can be bounded.

    (select() on a pipe says nothing about lines already in Python's buffer.)
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def next(self, timeout_s: float = 15.0) -> str:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout_s:g} s") from None

    def until(self, wanted: str, max_lines: int = 50) -> list[str]:
        """Lines up to and including the first that contains `wanted`."""
        lines = []
        for _ in range(max_lines):
            lines.append(self.next())
            if wanted in lines[-1]:
                return lines
        raise AssertionError(f"{wanted!r} not among {lines}")

    def rest(self, timeout_s: float = 15.0) -> list[str]:
        """Every remaining line, once the process has closed its stdout."""
        self._thread.join(timeout_s)
        return list(self._queue.queue)


@dataclass(frozen=True)
class NodeFiles:
    """One node's folder, config and addresses."""

    name: str
    folder: Path
    ip: str
    port: int

    @property
    def config(self) -> Path:
        return self.folder / "meshd.toml"

    @property
    def socket(self) -> Path:
        return self.folder / "meshd.sock"

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{self.port}"


class Cluster:
    """A CA and node folders under `root`; the agent processes this object started."""

    def __init__(self, root: Path, ips: list[str], profile: str = "local") -> None:
        self.root = root
        self.ips = ips
        self.port = free_port(ips)
        self.profile = profile
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        code, _ = meshd_in_process("ca", "init", "--dir", root / "ca")
        assert code == 0

    def node(self, index: int, *, seeds: Sequence[NodeFiles] = (), metrics: str | None = None,
             vpc_grant: str | None = None, vpc_subnet: str | None = None) -> NodeFiles:
        """Keys, a certificate and a config for node `n{index}` on `ips[index - 1]`."""
        node = NodeFiles(f"n{index}", self.root / f"n{index}", self.ips[index - 1], self.port)
        grant = vpc_grant or f"10.20.{index}.0/24"
        for args in (("keygen", "--dir", node.folder),
                     ("ca", "sign", "--dir", self.root / "ca", "--node-pub",
                      node.folder / "node.pub", "--name", node.name, "--vpc", f"blue={grant}",
                      "--out", node.folder / "node.cert")):
            code, _ = meshd_in_process(*args)
            assert code == 0, args
        node.config.write_text(render_local(
            node.name, node.gossip, seeds=[seed.gossip for seed in seeds], profile=self.profile,
            vpcs={"blue": vpc_subnet or grant}, metrics=metrics))
        return node

    def start(self, node: NodeFiles, *argv: str) -> subprocess.Popen[bytes]:
        """`meshd agent --config ...` (or `argv` instead), logging to the node's folder."""
        with open(node.folder / "agent.log", "ab") as log:
            proc = subprocess.Popen(argv or [*MESHD, "agent", "--config", str(node.config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self.procs[node.name] = proc
        return proc

    def signal(self, node: NodeFiles, sig: signal.Signals) -> None:
        proc = self.procs[node.name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def wait_exit(self, node: NodeFiles) -> int:
        return self.procs[node.name].wait(timeout=EXIT_WAIT_S)

    def stop_all(self) -> None:
        """SIGKILL every agent started here, by PID, and reap it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EXIT_WAIT_S)

    def log(self, node: NodeFiles) -> str:
        path = node.folder / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


def members(node: NodeFiles) -> dict[str, dict[str, Any]]:
    """`meshd members --json` of one node, by name; empty when it does not answer."""
    code, out = meshd_in_process("members", "--json", "--socket", node.socket)
    return {m["name"]: m for m in json.loads(out)} if code == 0 else {}


def states(node: NodeFiles) -> dict[str, str]:
    return {name: m["state"] for name, m in members(node).items()}
