#!/usr/bin/env python3
"""What an idle wake-up costs a Python process here: the floor under meshd's idle CPU.

An idle SWIM member wakes about three times a second: its own probe goes out, the ack
comes back, another member's probe arrives and is answered. meshd's engine handles a
probe or an ack in ~25 us when its caches are warm (engines driven in a loop in one
process), yet an idle agent spends 200-300 us per wake-up. This bench shows where the
rest goes by running, side by side, processes that do nothing but the wake-ups:

- ``sleep``: a Python loop blocked in poll(2) with a 333 ms timeout, no I/O;
- ``udp``: two Python processes on loopback that each send one 64-byte probe a second
  (half a second apart) and answer the other's: SWIM's three wake-ups, no protocol;
- ``meshd``: two real meshd agents (membership only, ``lan`` profile) joined together;
- ``kinship``: two kinship agents (``lan`` preset, Rust core) joined the same way, so
  the floor and the agent a user would pick instead are measured in one run.

CPU is read from /proc/PID/task/*/schedstat (ns) over the window, wake-ups from
voluntary context switches. Prints a markdown table; ``--out FILE`` also appends it.

    .venv/bin/python bench/wake_floor.py --window-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.common import AgentError, DriverSettings, cpu_seconds  # noqa: E402
from peers import DRIVERS  # noqa: E402

LOOPBACK = "127.0.4.1"
PORTS = (47001, 47002)
SETTLE_S = 5.0
READY_S = 30.0


def run_sleep(duration_s: float) -> None:
    """Child: three wake-ups a second, nothing else."""
    poller = select.poll()
    end = time.monotonic() + duration_s
    while time.monotonic() < end:
        poller.poll(333)


def run_udp(me: int, peer: int, duration_s: float) -> None:
    """Child: one probe a second to `peer`, an ack for each probe received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, me))
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    now = time.monotonic()
    end, next_probe = now + duration_s, now + (1.0 if me == PORTS[0] else 1.5)
    while now < end:
        for _ in poller.poll(max(0, int((next_probe - now) * 1000))):
            _answer(sock)
        now = time.monotonic()
        if now >= next_probe:
            sock.sendto(b"p" + os.urandom(63), (LOOPBACK, peer))
            next_probe += 1.0
    sock.close()


def _answer(sock: socket.socket) -> None:
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            return
        if data[:1] == b"p":
            sock.sendto(b"a" + data[1:], addr)


@dataclass(frozen=True, slots=True)
class Row:
    what: str
    cpu_pct: float
    wakeups_per_s: float

    @property
    def us_per_wakeup(self) -> float:
        return self.cpu_pct / 100 * 1e6 / self.wakeups_per_s if self.wakeups_per_s else 0.0


def voluntary_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def measure(what: str, pids: list[int], window_s: float) -> Row:
    """Mean over `pids` of CPU % and wake-ups per second across the window."""
    cpu0 = [cpu_seconds(p) for p in pids]
    sw0 = [voluntary_switches(p) for p in pids]
    start = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - start
    cpu = sum(cpu_seconds(p) - c for p, c in zip(pids, cpu0)) / len(pids)
    switches = sum(voluntary_switches(p) - s for p, s in zip(pids, sw0)) / len(pids)
    return Row(what, 100 * cpu / elapsed, switches / elapsed)


def spawn_child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--child", *args])


async def measure_agents(system: str, what: str, window_s: float) -> Row:
    """Two agents through the vs_peers driver, the second joined through the first."""
    with tempfile.TemporaryDirectory(prefix="wake_floor-") as workdir:
        driver = DRIVERS[system](DriverSettings(Path(workdir)))
        try:
            for index in (1, 2):
                await driver.launch(index)
            for _ in range(int(READY_S / 0.1)):
                try:
                    await asyncio.gather(driver.ping(1), driver.ping(2))
                    break
                except AgentError:
                    await asyncio.sleep(0.1)
            await driver.join(2, 1)
            await asyncio.sleep(3 * SETTLE_S)   # joined, and the join's settling syncs are over
            return await asyncio.to_thread(measure, what, [driver.pid(1), driver.pid(2)], window_s)
        finally:
            await driver.stop_all()


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill by the PIDs we started and reap them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def run(window_s: float) -> list[Row]:
    rows = []
    lifetime = f"{window_s + 2 * SETTLE_S + 5:g}"
    cases: list[tuple[str, list[tuple[str, ...]]]] = [
        ("Python, poll(2) timeout 333 ms, no I/O", [("sleep", lifetime)]),
        ("Python, UDP probe + ack, 1 probe/s each way",
         [("udp", str(PORTS[0]), str(PORTS[1]), lifetime),
          ("udp", str(PORTS[1]), str(PORTS[0]), lifetime)])]
    for what, children in cases:
        procs = [spawn_child(*child) for child in children]
        try:
            time.sleep(SETTLE_S)
            rows.append(measure(what, [p.pid for p in procs], window_s))
        finally:
            stop(procs)
    rows.append(asyncio.run(measure_agents("meshd", "meshd agent, 2 members, lan profile",
                                           window_s)))
    rows.append(asyncio.run(measure_agents("kinship", "kinship agent, 2 members, lan preset",
                                           window_s)))
    return rows


def render(rows: list[Row], window_s: float) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### wake_floor ({stamp}, Python {platform.python_version()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs, {window_s:g} s window)", "",
             "| process | CPU % of one core | wake-ups/s | µs per wake-up |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r.what} | {r.cpu_pct:.4f} | {r.wakeups_per_s:.2f} | {r.us_per_wakeup:.0f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "sleep":
            run_sleep(float(args[0]))
        else:
            run_udp(int(args[0]), int(args[1]), float(args[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    if opts.window_s < 10:
        parser.error("--window-s must be at least 10")
    table = render(run(opts.window_s), opts.window_s)
    print(table)
    if opts.out is not None:
        with opts.out.open("a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
