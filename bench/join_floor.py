#!/usr/bin/env python3
"""The least CPU a meshd join storm can cost in Python, beside kinship's measured join, in one run.

DESIGN has every receiver verify every signed fact itself, so each of N joining agents
must admit N-1 node records (a record signature and a CA certificate each) and run the
gossip engine's protocol logic until it sees everyone. This bench measures those two
costs with no I/O, no asyncio, no threads and no sockets, and turns them into a lower
bound on the join's wall time on this machine's cores:

- admission: `Table.merge` of the N-1 other node records, from a converged simulated
  cluster of the same size, into an empty table with caches of its own (the best of
  several tries), as one agent pays it;
- engine: the simulator's N-node join storm until every node sees every other alive,
  counting only the CPU inside the engine's entry points (`start`, `join`,
  `handle_timer`, `receive_datagram`, `open_sync`, `accept_sync`, a sync session's
  `receive`), per node. Its nodes share one record cache, so each record's
  verification is paid once for the whole cluster: that is taken off again.

floor wall s = N x (admission + engine) / cores: every agent busy, none idle, zero
cost for the shell around the engine. The real agents (meshd's and kinship's) are then
joined through agent 1 as `bench/vs_peers.py` does, timed from all ready until every
agent sees all N alive, with the CPU all agents used from the join request until the
poll that saw it done.

    .venv/bin/python bench/join_floor.py --n 10,25,50,100 --reps 3 --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.identity import Trust
from meshd.sim.cluster import Cluster, SimNode
from meshd.table import RecordCache, Table
from peers import DRIVERS
from peers.common import AgentError, DriverSettings, cpu_seconds, node_name
from vs_peers import Poller, cell, join_all, ratio, sees_all_alive, timed

SIM_SEED = 1
ADMISSION_TRIES = 5
FORM_TIMEOUT_S = 120.0
FORM_STEP_S = 0.01        # engine CPU is counted until the first step that sees convergence
POLL_CONCURRENCY = 8
JOIN_TIMEOUT_S = 120.0
SYSTEMS = ("meshd", "kinship")
#: The engine's entry points a shell calls with work to do; accessors are left out, so
#: the engine figure errs low, as a floor should.
ENGINE_CALLS = frozenset({"start", "join", "handle_timer", "receive_datagram"})
SESSION_CALLS = frozenset({"open_sync", "accept_sync"})


class _Metered:
    """Delegates to `target`; the CPU time of the calls in `names` is added to `meter[0]`.

    Sync sessions handed out by `open_sync`/`accept_sync` are metered the same way.
    """

    def __init__(self, target: Any, names: frozenset[str], meter: list[float]) -> None:
        self._target = target
        self._names = names
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in self._names and name not in SESSION_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                result = attr(*args, **kwargs)
            finally:
                self._meter[0] += time.process_time() - start
            if name == "open_sync":
                session, frame = result
                return _Metered(session, frozenset({"receive"}), self._meter), frame
            if name == "accept_sync":
                return _Metered(result, frozenset({"receive"}), self._meter)
            return result

        return call


class _MeteredCluster(Cluster):
    """The simulator, with every engine's own CPU time summed in `engine_s`."""

    def __init__(self, n: int, seed: int) -> None:
        self._meter = [0.0]
        super().__init__(n, seed)

    @property
    def engine_s(self) -> float:
        return self._meter[0]

    def _new_engine(self, node: SimNode, table: Table | None = None) -> Any:
        return _Metered(super()._new_engine(node, table), ENGINE_CALLS, self._meter)


@dataclass(frozen=True, slots=True)
class Floor:
    n: int
    cores: int
    admission_ms: float     # per agent: N-1 records from scratch
    engine_ms: float        # per node, the shared verifications taken off

    @property
    def per_agent_ms(self) -> float:
        return self.admission_ms + self.engine_ms

    @property
    def wall_s(self) -> float:
        return self.n * self.per_agent_ms / 1000 / self.cores


def admission_ms(cluster: Cluster) -> float:
    """CPU ms for one agent to admit every other node's record with cold caches (best try)."""
    observer = cluster.nodes[0].engine
    assert observer is not None
    wires = [r.to_wire() for r in observer.table.nodes() if r.origin != observer.node_id]
    best = float("inf")
    for _ in range(ADMISSION_TRIES):
        table = Table(Trust(cluster.cluster_file), cache=RecordCache())
        start = time.process_time()
        result = table.merge(wires, cluster.wall_ms())
        best = min(best, time.process_time() - start)
        if len(result.changes) != len(wires):
            raise SystemExit(f"admission: {len(result.changes)} of {len(wires)} records "
                             f"admitted ({dict(result.rejected)})")
    return best * 1000


def measure_floor(n: int, cores: int) -> Floor:
    cluster = _MeteredCluster(n, SIM_SEED)
    cluster.join_all()
    if cluster.run_until(cluster.converged, FORM_TIMEOUT_S, FORM_STEP_S) is None:
        raise SystemExit(f"N={n}: the simulated join storm did not converge")
    admit = admission_ms(cluster)
    shared_ms = n * admit / (n - 1)      # each record verified once, by whichever engine came first
    engine = (cluster.engine_s * 1000 - shared_ms) / n
    return Floor(n, cores, admit, engine)


@dataclass(frozen=True, slots=True)
class Join:
    seconds: float | None
    cpu_ms_per_agent: float | None


async def measure_join(system: str, n: int) -> Join:
    """One fresh cluster of real agents on loopback, joined through agent 1."""
    with tempfile.TemporaryDirectory(prefix=f"join_floor-{system}-{n}-") as workdir:
        driver = DRIVERS[system](DriverSettings(Path(workdir)))
        poller = Poller(driver, POLL_CONCURRENCY, JOIN_TIMEOUT_S)
        agents = list(range(1, n + 1))
        try:
            for index in agents:
                await driver.launch(index)
            await poller.wait_ready(agents)
            pids = [driver.pid(i) for i in agents]
            before = await asyncio.to_thread(lambda: [cpu_seconds(p) for p in pids])
            seconds = await timed(poller, agents, sees_all_alive([node_name(i) for i in agents]),
                                  join_all(driver, poller, agents))
            after = await asyncio.to_thread(lambda: [cpu_seconds(p) for p in pids])
            return Join(seconds, 1000 * statistics.mean(b - a for a, b in zip(before, after)))
        finally:
            await driver.stop_all()


# --- output ------------------------------------------------------------------------------


def render(floors: dict[int, Floor], joins: dict[tuple[str, int], list[Join]], reps: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cores = next(iter(floors.values())).cores
    lines = [
        (f"### join_floor ({stamp}, Python {platform.python_version()}, {platform.machine()}, "
         f"{cores} cores, {reps} join(s) per system and N)"),
        "",
        ("| N | admission ms/agent | engine ms/agent | floor ms/agent | floor wall s | "
         "meshd join s | meshd CPU ms/agent | kinship join s | kinship CPU ms/agent | "
         "floor/kinship | meshd/kinship |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, floor in floors.items():
        ours, theirs = joins.get(("meshd", n), []), joins.get(("kinship", n), [])
        kin_s = [j.seconds for j in theirs]
        ours_s = [j.seconds for j in ours]
        lines.append(
            f"| {n} | {floor.admission_ms:.1f} | {floor.engine_ms:.1f} | {floor.per_agent_ms:.1f} | "
            f"{floor.wall_s:.2f} | {cell(ours_s, 2)} | "
            f"{cell([j.cpu_ms_per_agent for j in ours], 1)} | {cell(kin_s, 2)} | "
            f"{cell([j.cpu_ms_per_agent for j in theirs], 1)} | "
            f"{ratio([floor.wall_s], kin_s)} | {ratio(ours_s, kin_s)} |")
    lines += [
        "",
        ("Cells are median / worst over the joins (one value when they agree); ✗: a join "
         "timed out or failed. floor wall s = N x floor ms / cores: the join's CPU spread "
         "over every core with nothing else running and no cost for sockets, threads, "
         "asyncio or the control socket. Join: s from every agent ready until every agent "
         "sees all N alive (the slowest agent's own stamp); CPU from the join request until "
         "the poll that saw it done, all threads of every agent."),
    ]
    return "\n".join(lines) + "\n"


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or any(not 3 <= n <= 254 for n in sizes):
        raise argparse.ArgumentTypeError("sizes are integers 3..254, comma separated")
    return sizes


async def run_joins(sizes: Sequence[int], reps: int, log: Callable[[str], None]
                    ) -> dict[tuple[str, int], list[Join]]:
    """Every system, N and repetition, one after another so they never compete for CPU."""
    joins: dict[tuple[str, int], list[Join]] = {}
    for n in sizes:
        for system in SYSTEMS:
            for rep in range(1, reps + 1):
                try:
                    join = await measure_join(system, n)
                except AgentError as exc:
                    log(f"{system} N={n} rep {rep}: failed: {exc}")
                    join = Join(None, None)
                log(f"{system} N={n} rep {rep}: join {join.seconds} s, "
                    f"{join.cpu_ms_per_agent} CPU ms/agent")
                joins.setdefault((system, n), []).append(join)
    return joins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=_sizes, default=(10, 25, 50, 100),
                        help="cluster sizes, comma separated (default 10,25,50,100)")
    parser.add_argument("--reps", type=int, default=3, help="real joins per system and N")
    parser.add_argument("--out", type=Path, help="also append the table to this markdown file")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    cores = len(os.sched_getaffinity(0))
    floors = {}
    for n in args.n:
        floors[n] = measure_floor(n, cores)
        log(f"N={n}: floor {floors[n].per_agent_ms:.1f} ms/agent "
            f"(admission {floors[n].admission_ms:.1f}, engine {floors[n].engine_ms:.1f}), "
            f"{floors[n].wall_s:.2f} s on {cores} cores")
    joins = asyncio.run(run_joins(args.n, args.reps, log))
    text = render(floors, joins, args.reps)
    print(text)
    if args.out is not None:
        with args.out.open("a", encoding="utf-8") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
