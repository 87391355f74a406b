#!/usr/bin/env python3
"""Side-by-side membership benchmark: meshd's agents against HashiCorp Serf and kinship.

Every system runs N real agent processes on loopback, agent I on 127.0.1.I, all joined
through agent 1. Per system and N it measures the time until every agent sees: all N after
joining, one agent's tag/meta update, a kill -9, and a graceful leave; and, over an idle
window, CPU % and RSS per agent and gossip bytes per second per agent. "Every agent sees"
is observed by polling each agent's member list; the time reported is the slowest agent's.
Where a system stamps what each agent learned and when (meshd's ``since_ms``; kinship's
events, stamped on delivery by our kinship agent), that time is the stamp, so the poll's
0.2 s resolution and the time a poll round takes do not count; Serf's `members` has no such
stamp, so its times are when the first poll that saw the change was answered. A poll of a
meshd agent reads a copy of its list kept from its ``meshd watch`` stream
(peers/meshd_mirror.py), so polling costs meshd's agents no CPU; kinship's agents answer
a JSON line over a pipe, Serf's a ``serf members`` process.

Run as root (the byte counters are an nftables table, created and deleted here), from the
repository root, with the venv that has kinship installed:

    .venv/bin/python bench/vs_peers.py --quick --idle-s 10
    .venv/bin/python bench/vs_peers.py --n 10,25,50,100 --reps 3 --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from peers import DRIVERS
from peers.common import (
    MAX_AGENTS,
    AgentError,
    Driver,
    DriverSettings,
    MemberView,
    Status,
    View,
    cpu_seconds,
    node_name,
    rss_bytes,
)
from peers.netcount import NftCounters, Traffic

log = logging.getLogger("vs_peers")
T = TypeVar("T")

#: Table columns, meshd first. A column whose system has no driver or was not run shows n/a.
COLUMNS = ("meshd", "serf", "kinship")
LABELS = {"meshd": "meshd", "serf": "Serf", "kinship": "kinship"}
#: Every agent joins through agent 1, as a fresh cluster bootstraps from one seed.
SEED = 1
#: Agent 2 publishes the update: a non-seed node, so the seed's central position is no help.
UPDATE_ORIGIN = 2
TAG_KEY = "bench"
#: After convergence the join's rumours are still being retransmitted (meshd's node records
#: carry their certificates, so at N=100 its retransmits drain for ~20 s); waiting this
#: long, the same for every system, makes the idle window measure steady state.
SETTLE_S = 25.0
#: Pause between poll rounds, which bounds the timing resolution (plus one round's duration).
POLL_INTERVAL_S = 0.2
#: Starting N processes (N Python interpreters for kinship) on two cores takes a while.
READY_BASE_S, READY_PER_AGENT_S = 30.0, 0.5
MISSING = "✗"
#: What a view predicate returns for a view that satisfies it: the wall-clock second at which
#: the agent learned what satisfies it, or UNSTAMPED if its system does not say (Serf), and
#: None for a view that does not.
Seen = Callable[[View], float | None]
UNSTAMPED = math.inf


@dataclass(frozen=True)
class Metric:
    """One results table."""

    key: str
    title: str
    digits: int


METRICS = (
    Metric("join_s", "Join: s from all agents ready until every agent sees all N alive", 2),
    Metric("update_s", "Update: s until every agent sees agent 2's new tag/meta", 2),
    Metric("kill_s", "kill -9: s until every survivor sees the killed agent failed", 2),
    Metric("leave_s", "Graceful leave: s until every remaining agent sees it left", 2),
    Metric("cpu_pct", "Idle CPU per agent (% of one core)", 3),
    Metric("rss_mib", "RSS per agent (MiB, VmRSS)", 1),
    Metric("payload_bps", "Idle gossip per agent (UDP+TCP L4 payload, B/s)", 0),
    Metric("wire_bps", "Idle gossip per agent (IPv4 bytes incl. headers, B/s)", 0),
    Metric("false_alarms", "False alarms: never-stopped members seen suspect/failed/left", 0),
)

#: One run's results: metric key to value, None when it timed out or the run failed.
RunResult = dict[str, float | None]
#: All results: (system, N) to metric key to one value per repetition.
Samples = dict[tuple[str, int], dict[str, list[float | None]]]


@dataclass(frozen=True)
class Plan:
    """What to run, from the command line."""

    systems: tuple[str, ...]
    sizes: tuple[int, ...]
    reps: int
    idle_cpu_s: float
    idle_bytes_s: float
    timeout_s: float
    concurrency: int
    encrypt_key: str | None


class Poller:
    """Polls agents' member lists in parallel: bounded in concurrency, rounds and time.

    Every view it reads is also checked for false alarms: a member that was never stopped
    on purpose but shows as anything other than alive.
    """

    def __init__(self, driver: Driver, concurrency: int, timeout_s: float) -> None:
        self._driver = driver
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout_s = timeout_s
        #: Names the harness killed or made leave; their departures are not false alarms.
        self.stopped: set[str] = set()
        self.false_alarms: set[str] = set()
        #: Wall clock minus monotonic clock: turns agents' wall-clock stamps into our times.
        self._wall_offset = time.time() - time.monotonic()

    async def limited(self, work: Awaitable[T]) -> T:
        """Runs ``work`` in one of the concurrency slots that polls also share."""
        async with self._slots:
            return await work

    async def wait_ready(self, agents: Sequence[int]) -> None:
        """Returns once every agent answers its control channel; raises AgentError if some
        still do not after a deadline that grows with N."""
        timeout_s = READY_BASE_S + READY_PER_AGENT_S * len(agents)
        deadline = time.monotonic() + timeout_s
        pending = list(agents)
        for _ in range(math.ceil(timeout_s / POLL_INTERVAL_S)):
            answered = await asyncio.gather(*(self._answers(i) for i in pending))
            pending = [i for i, ok in zip(pending, answered, strict=True) if not ok]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        if pending:
            raise AgentError(f"agents {pending} not ready after {timeout_s:.0f} s")

    async def _answers(self, index: int) -> bool:
        try:
            await self.limited(self._driver.ping(index))
        except AgentError:
            return False
        return True

    async def until_all(
        self, observers: Sequence[int], seen: Seen, t0: float
    ) -> float | None:
        """Seconds from ``t0`` until the slowest observer's view satisfied ``seen``, or None
        if some observer still had not when the timeout ran out. An observer is polled only
        until it first satisfies ``seen``."""
        deadline = t0 + self._timeout_s
        pending, last = list(observers), t0
        for _ in range(math.ceil(self._timeout_s / POLL_INTERVAL_S) + 1):
            round_start = time.monotonic()
            times = await asyncio.gather(*(self._seen_at(i, seen) for i in pending))
            last = max([last, *(t for t in times if t is not None)])
            pending = [i for i, t in zip(pending, times, strict=True) if t is None]
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - round_start)))
        return None if pending else last - t0

    async def sweep(self, agents: Sequence[int]) -> None:
        """Reads every view once, only to catch false alarms."""
        await self.until_all(agents, lambda _view: UNSTAMPED, time.monotonic())

    async def _seen_at(self, index: int, seen: Seen) -> float | None:
        """When agent ``index``'s view, read now, satisfied ``seen``; None if it did not or
        did not answer. That is the time the agent says it learned it, where its system
        stamps changes, else when the answer arrived (an upper bound)."""
        try:
            view = await self.limited(self._driver.view(index))
        except AgentError as exc:
            log.debug("agent %d: %s", index, exc)
            return None
        at = time.monotonic()
        self._note_false_alarms(view)
        stamp = seen(view)
        if stamp is None:
            return None
        return min(at, stamp - self._wall_offset)

    def _note_false_alarms(self, view: View) -> None:
        for name, member in view.items():
            if member.status is not Status.ALIVE and name not in self.stopped:
                self.false_alarms.add(name)


def learned(member: MemberView) -> float:
    """When the observer learned ``member``'s current state and tags; UNSTAMPED if its
    system does not say."""
    return UNSTAMPED if member.since is None else member.since


def sees_all_alive(names: Sequence[str]) -> Seen:
    """A view that lists every one of ``names`` as alive; learned when the last one was."""

    def seen(view: View) -> float | None:
        if not all(name in view and view[name].status is Status.ALIVE for name in names):
            return None
        return max(learned(view[name]) for name in names)

    return seen


def sees_gone(name: str, status: Status) -> Seen:
    """A view that shows ``name`` in ``status``, or has dropped it from the list."""

    def seen(view: View) -> float | None:
        if name not in view:
            return UNSTAMPED
        return learned(view[name]) if view[name].status is status else None

    return seen


def sees_tag(name: str, key: str, value: str) -> Seen:
    """A view in which member ``name`` carries tag ``key`` = ``value``."""

    def seen(view: View) -> float | None:
        if name in view and view[name].tags.get(key) == value:
            return learned(view[name])
        return None

    return seen


async def timed(
    poller: Poller,
    observers: Sequence[int],
    seen: Seen,
    action: Awaitable[None],
) -> float | None:
    """Starts ``action`` and polls ``observers`` at the same time, since actions such as
    ``serf leave`` return only once their effect is under way; the clock starts before it.
    A failed action is logged, and its phase then usually times out."""
    t0 = time.monotonic()
    task = asyncio.ensure_future(action)
    try:
        elapsed = await poller.until_all(observers, seen, t0)
    except BaseException:
        task.cancel()
        raise
    try:
        await task
    except AgentError as exc:
        log.warning("action failed: %s", exc)
    return elapsed


async def join_all(driver: Driver, poller: Poller, agents: Sequence[int]) -> None:
    """Every agent but the seed joins through the seed, concurrently within the poll slots."""

    async def join(index: int) -> None:
        try:
            await poller.limited(driver.join(index, SEED))
        except AgentError as exc:
            log.warning("agent %d could not join: %s", index, exc)

    await asyncio.gather(*(join(i) for i in agents if i != SEED))


async def crash(driver: Driver, index: int) -> None:
    """kill -9 as an action for timed()."""
    driver.kill(index)


def _cpu_all(pids: Sequence[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


async def idle_cpu(pids: Sequence[int], window_s: float) -> float:
    """Mean CPU % of one core per agent over the window (schedstat, all threads). /proc reads run
    in a thread so the event loop never waits on them."""
    before, t0 = await asyncio.to_thread(_cpu_all, pids), time.monotonic()
    await asyncio.sleep(window_s)
    after, elapsed = await asyncio.to_thread(_cpu_all, pids), time.monotonic() - t0
    return statistics.mean(b - a for a, b in zip(before, after, strict=True)) / elapsed * 100


async def idle_traffic(net: NftCounters, window_s: float) -> tuple[Traffic, float]:
    """Gossip traffic of all agents over the window, and the window's real length."""
    before, t0 = await net.read(), time.monotonic()
    await asyncio.sleep(window_s)
    after, elapsed = await net.read(), time.monotonic() - t0
    return after - before, elapsed


async def measure_idle(
    driver: Driver, net: NftCounters, agents: Sequence[int], plan: Plan
) -> RunResult:
    """CPU and traffic over overlapping idle windows (both start together), then RSS."""
    pids = [driver.pid(i) for i in agents]
    cpu_pct, (traffic, elapsed) = await asyncio.gather(
        idle_cpu(pids, plan.idle_cpu_s), idle_traffic(net, plan.idle_bytes_s)
    )
    rss = await asyncio.to_thread(lambda: [rss_bytes(pid) for pid in pids])
    per_agent_s = len(agents) * elapsed
    return {
        "cpu_pct": cpu_pct,
        "rss_mib": statistics.mean(rss) / 2**20,
        "payload_bps": traffic.payload_bytes / per_agent_s,
        "wire_bps": traffic.wire_bytes / per_agent_s,
    }


async def measure(
    driver: Driver, poller: Poller, net: NftCounters, agents: Sequence[int], plan: Plan
) -> RunResult:
    """The phases in order: join, idle, update, kill -9 of the last agent, graceful leave of
    the one before it. Each phase is timed from its action to the slowest observer."""
    result: RunResult = {}
    names = [node_name(i) for i in agents]
    result["join_s"] = await timed(
        poller, agents, sees_all_alive(names), join_all(driver, poller, agents)
    )
    await asyncio.sleep(SETTLE_S)
    result |= await measure_idle(driver, net, agents, plan)
    await poller.sweep(agents)

    token = uuid.uuid4().hex[:12]
    result["update_s"] = await timed(
        poller,
        agents,
        sees_tag(node_name(UPDATE_ORIGIN), TAG_KEY, token),
        driver.set_tag(UPDATE_ORIGIN, TAG_KEY, token),
    )

    victim, leaver = agents[-1], agents[-2]
    poller.stopped.add(node_name(victim))
    result["kill_s"] = await timed(
        poller, agents[:-1], sees_gone(node_name(victim), Status.FAILED), crash(driver, victim)
    )
    poller.stopped.add(node_name(leaver))
    result["leave_s"] = await timed(
        poller, agents[:-2], sees_gone(node_name(leaver), Status.LEFT), driver.leave(leaver)
    )
    result["false_alarms"] = float(len(poller.false_alarms))
    return result


async def run_once(system: str, n: int, plan: Plan, net: NftCounters) -> RunResult:
    """One fresh cluster of ``n`` agents, measured, then every process killed by its PID."""
    with tempfile.TemporaryDirectory(prefix=f"vs_peers-{system}-{n}-") as workdir:
        driver = DRIVERS[system](DriverSettings(Path(workdir), plan.encrypt_key))
        poller = Poller(driver, plan.concurrency, plan.timeout_s)
        agents = list(range(1, n + 1))
        try:
            for index in agents:
                await driver.launch(index)
            await poller.wait_ready(agents)
            return await measure(driver, poller, net, agents, plan)
        finally:
            await driver.stop_all()


async def run_benchmark(plan: Plan) -> tuple[Samples, dict[str, str]]:
    """Every N, repetition and system, one after another so they never compete for CPU.

    The systems take turns within each N and repetition rather than each running all of
    its cases in a block: this machine drifts within an hour (session 12's kinship block
    went from 0.040 % idle CPU at N=10 to 0.030 % at N=100 in 15 minutes), and turns
    spread that drift over every system alike instead of handing it to one block.

    SIGTERM cancels it as Ctrl-C does, so the finally blocks still kill every agent by PID
    and delete the nft table."""
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    versions = {system: await DRIVERS[system].version() for system in plan.systems}
    samples: Samples = {}
    async with NftCounters() as net:
        for n in plan.sizes:
            for rep in range(1, plan.reps + 1):
                for system in plan.systems:
                    log.info("%s N=%d rep %d/%d ...", system, n, rep, plan.reps)
                    try:
                        result = await run_once(system, n, plan, net)
                    except AgentError as exc:
                        log.error("%s N=%d rep %d failed: %s", system, n, rep, exc)
                        result = {}
                    log.info("%s N=%d rep %d: %s", system, n, rep, _brief(result))
                    per_metric = samples.setdefault((system, n), {})
                    for metric in METRICS:
                        per_metric.setdefault(metric.key, []).append(result.get(metric.key))
    return samples, versions


def _brief(result: RunResult) -> str:
    return (
        ", ".join(f"{k}={MISSING if v is None else round(v, 2)}" for k, v in result.items())
        or "no result"
    )


def summarize(values: Sequence[float | None]) -> tuple[float, float]:
    """Median and worst (largest) over repetitions; a missing value counts as infinite."""
    finite = [math.inf if v is None else v for v in values]
    return statistics.median(finite), max(finite)


def fmt(value: float, digits: int) -> str:
    return MISSING if math.isinf(value) else f"{value:.{digits}f}"


def cell(values: Sequence[float | None] | None, digits: int) -> str:
    """Median / worst as text, one value when they agree, n/a when the system was not run."""
    if not values:
        return "n/a"
    median, worst = summarize(values)
    med, wst = fmt(median, digits), fmt(worst, digits)
    return med if med == wst else f"{med} / {wst}"


def ratio(ours: Sequence[float | None] | None, theirs: Sequence[float | None] | None) -> str:
    """meshd's median over the other system's, n/a unless both have a finite median."""
    if not ours or not theirs:
        return "n/a"
    mine, other = summarize(ours)[0], summarize(theirs)[0]
    if math.isinf(mine) or math.isinf(other) or other == 0:
        return "n/a"
    return f"{mine / other:.2f}"


def render_table(metric: Metric, samples: Samples, sizes: Sequence[int]) -> list[str]:
    head = ["N", *(LABELS[s] for s in COLUMNS), "meshd/Serf", "meshd/kinship"]
    lines = [f"### {metric.title}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---:|" * len(head))
    for n in sizes:
        col = {s: samples.get((s, n), {}).get(metric.key) for s in COLUMNS}
        row = [str(n), *(cell(col[s], metric.digits) for s in COLUMNS)]
        row += [ratio(col["meshd"], col["serf"]), ratio(col["meshd"], col["kinship"])]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def render(samples: Samples, versions: dict[str, str], plan: Plan) -> str:
    """The markdown report: a header saying how it was run, then one table per metric."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## vs_peers, {stamp}",
        "",
        f"N = {', '.join(map(str, plan.sizes))}; {plan.reps} repetition(s); idle windows: "
        f"CPU {plan.idle_cpu_s:g} s, bytes {plan.idle_bytes_s:g} s; gossip "
        f"{'encrypted' if plan.encrypt_key else 'plaintext'}; {os.cpu_count()} CPUs; "
        + "; ".join(versions[s] for s in plan.systems)
        + ".",
        "",
        f"Cells are median / worst over repetitions (one value when they agree). "
        f"{MISSING}: timed out after {plan.timeout_s:g} s or the run failed. "
        "Times are to the slowest agent: when it says it learned the change (meshd, kinship), or "
        "when a poll of its member list first showed it (Serf, which has no stamps). Updates: Serf "
        "`serf tags -set`, kinship `update_meta`. Leave: Serf `serf leave`, kinship SIGTERM. "
        "Bytes: every UDP/TCP packet to or from 127.0.1.0/24, divided by N.",
        "",
    ]
    for metric in METRICS:
        lines += render_table(metric, samples, plan.sizes)
    return "\n".join(lines)


def _csv_ints(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or any(not 3 <= n <= MAX_AGENTS for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be 3..{MAX_AGENTS}, comma separated")
    return sizes


def _csv_systems(text: str) -> tuple[str, ...]:
    systems = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [s for s in systems if s not in DRIVERS]
    if not systems or unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {', '.join(DRIVERS)}")
    return systems


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--systems",
        type=_csv_systems,
        default=tuple(DRIVERS),
        help=f"comma-separated systems (default: {','.join(DRIVERS)})",
    )
    parser.add_argument(
        "--n",
        type=_csv_ints,
        default=(10, 25),
        help="comma-separated cluster sizes, 3..254 (default: 10,25)",
    )
    parser.add_argument("--quick", action="store_true", help="N=10 only")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per N (default: 1)")
    parser.add_argument(
        "--idle-s", type=_positive, help="both idle windows, in s (default: 60 s CPU, 90 s bytes)"
    )
    parser.add_argument(
        "--timeout-s",
        type=_positive,
        default=120.0,
        help="bound on each timed phase (default: 120)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="control requests in flight at once (default: 8)"
    )
    parser.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt gossip in every system with one shared 32-byte key",
    )
    parser.add_argument("--out", type=Path, help="also append the tables to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.concurrency < 1:
        parser.error("--reps and --concurrency must be at least 1")
    return args


def plan_from(args: argparse.Namespace) -> Plan:
    return Plan(
        systems=args.systems,
        sizes=(10,) if args.quick else args.n,
        reps=args.reps,
        idle_cpu_s=args.idle_s or 60.0,
        idle_bytes_s=args.idle_s or 90.0,
        timeout_s=args.timeout_s,
        concurrency=args.concurrency,
        encrypt_key=base64.b64encode(os.urandom(32)).decode() if args.encrypt else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if shutil.which("nft") is None or os.geteuid() != 0:
        log.error("needs root and nft (apt-get install -y nftables) for the byte counters")
        return 2
    plan = plan_from(args)
    try:
        samples, versions = asyncio.run(run_benchmark(plan))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.error("interrupted: every agent started was killed, the nft table deleted")
        return 130
    report = render(samples, versions, plan)
    print(report)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
