"""`meshd demo`: a small mesh on this machine, shown step by step, then cleaned up.

It drives meshd only through its operator interface (the `meshd` commands and
control sockets), so what it prints is what an operator would see. Agents run
in membership-only mode on loopback addresses (127.0.77.x); the data-plane
steps (namespaces, WireGuard, routes) join this tour as they land.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from meshd import config
from meshd.pump import wall_ms   # the clock agents stamp `since_ms` with

HOSTS = ("h1", "h2", "h3")
BASE_IP = "127.0.77"
PORT = 7950
WAIT_S = 20.0
POLL_S = 0.1


def _meshd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshd", *args], capture_output=True, text=True,
                          check=check, timeout=30)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _show(args: list[str]) -> str:
    print("$ meshd " + " ".join(args), flush=True)
    out = _meshd(*args).stdout
    print(out.rstrip(), flush=True)
    return out


class Demo:
    """Owns the temporary cluster: files, agent processes, cleanup."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def socket(self, host: str) -> str:
        return str(self.root / host / "meshd.sock")

    def members(self, host: str) -> dict[str, dict[str, Any]]:
        out = _meshd("members", "--socket", self.socket(host), "--json", check=False)
        if out.returncode != 0:
            return {}
        return {m["name"]: m for m in json.loads(out.stdout)}

    def wait(self, what: str, predicate: Callable[[], bool]) -> None:
        """Poll until `predicate` holds (bounded)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"timed out after {WAIT_S:.0f} s waiting for {what}")

    def learned(self, observers: Iterable[str], members: Iterable[str]) -> int:
        """When the last of `observers` learned the last of `members`' current state, in
        wall-clock ms, by the observers' own stamps: a poll through a `meshd` process only
        bounds it from above, by that process's start-up time."""
        wanted = list(members)
        return max(max(listed[name]["since_ms"] for name in wanted)
                   for listed in map(self.members, observers))

    def make_cluster(self) -> None:
        _step("An offline cluster CA signs each host's identity")
        ca = self.root / "ca"
        _show(["ca", "init", "--dir", str(ca)])
        for i, host in enumerate(HOSTS, start=1):
            d = self.root / host
            _meshd("keygen", "--dir", str(d))
            _meshd("ca", "sign", "--dir", str(ca), "--node-pub", str(d / "node.pub"), "--name", host,
                   "--vpc", f"blue=10.20.{i}.0/24", "--out", str(d / "node.cert"))
            self.write_config(host, i)
        _show(["ca", "show", str(self.root / "h1" / "node.cert")])

    def write_config(self, host: str, index: int) -> None:
        seeds = [] if index == 1 else [f"{BASE_IP}.1:{PORT}"]
        (self.root / host / "meshd.toml").write_text(config.render_local(
            host, f"{BASE_IP}.{index}:{PORT}", seeds=seeds, profile="local",
            vpcs={"blue": f"10.20.{index}.0/24"}))

    def start_agents(self) -> None:
        _step("Three agents start; h2 and h3 join through h1 with a signed hello")
        started_ms = wall_ms()
        for host in HOSTS:
            path = self.root / host / "meshd.toml"
            log = open(self.root / host / "agent.log", "wb")
            self.procs[host] = subprocess.Popen(
                [sys.executable, "-m", "meshd", "agent", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        self.wait("all agents to see each other", lambda: all(
            len([m for m in self.members(h).values() if m["state"] == "alive"]) == len(HOSTS)
            for h in HOSTS))
        took = self.learned(HOSTS, HOSTS) - started_ms
        print(f"every agent lists {len(HOSTS)} alive members {took / 1000:.2f} s after the"
              " agents were started")
        _show(["members", "--socket", self.socket("h1")])

    def show_tags(self) -> None:
        _step("h2 changes a tag: a newer signed record, pushed at once")
        _show(["tags", "set", "role=db", "--socket", self.socket("h2")])
        self.wait("the tag at h3", lambda: self.members("h3").get("h2", {})
                  .get("tags", {}).get("role") == "db")
        took = self.learned(["h3"], ["h2"]) - self.learned(["h2"], ["h2"])
        print(f"h3 learned h2's tag role=db {took / 1000:.3f} s after h2 made it"
              " (each agent's own stamp)")

    def show_failure(self) -> None:
        _step("h3 is killed with SIGKILL: suspected, confirmed, declared dead")
        killed_ms = wall_ms()
        self.procs.pop("h3").kill()
        self.wait("h3 dead at h1 and h2", lambda: all(
            self.members(h).get("h3", {}).get("state") == "dead" for h in ("h1", "h2")))
        took = self.learned(["h1", "h2"], ["h3"]) - killed_ms
        print(f"h1 and h2 learned h3 was dead {took / 1000:.2f} s after the kill")
        _show(["members", "--socket", self.socket("h1")])

    def show_leave(self) -> None:
        _step("h2 gets SIGTERM: it leaves gracefully with a signed 'left' record")
        proc = self.procs.pop("h2")
        signalled_ms = wall_ms()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        self.wait("h2 left at h1", lambda: self.members("h1").get("h2", {})
                  .get("state") == "left")
        took = self.learned(["h1"], ["h2"]) - signalled_ms
        print(f"h1 learned h2 had left {took / 1000:.3f} s after the SIGTERM"
              f" (h2 exited with status {proc.returncode})")
        _show(["members", "--socket", self.socket("h1")])

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()


def run() -> int:
    """Run the tour; return a process exit status."""
    root = Path(tempfile.mkdtemp(prefix="meshd-demo-"))
    os.chmod(root, 0o700)
    demo = Demo(root)
    try:
        demo.make_cluster()
        demo.start_agents()
        demo.show_tags()
        demo.show_failure()
        demo.show_leave()
        _step("Done: every step above used only `meshd` commands and control sockets")
        return 0
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"meshd: error: demo failed: {exc}", file=sys.stderr)
        for host in HOSTS:
            log = root / host / "agent.log"
            if log.exists():
                print(f"--- {host} agent log (tail)\n{log.read_text()[-2000:]}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
        shutil.rmtree(root, ignore_errors=True)
