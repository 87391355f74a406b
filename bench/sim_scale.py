#!/usr/bin/env python3
"""Simulated scale: how fast one update reaches every node, and what an idle node sends.

N real gossip engines (lan profile) run in the deterministic simulator
(`meshd/sim`) on a LAN-like network without loss. For each N, each way of
starting (`--start`):
- `join`: all nodes join through node 0 at once; the bench waits until every
  table agrees and every piggyback queue has drained.
- `formed`: every node starts as a member of the cluster formed already
  (`Cluster.start_formed`: one converged table, forked per node). It needs
  ~130-160 B per node pair against ~470 for a join storm's N tables built
  record by record, which is what lets N = 10,000 run.
Then, after one push-pull interval, traffic is measured over an idle window, one
node changes its tags, and the bench records when each other node saw the new
record. Each run is a child process of its own, so its peak RSS is its own. A
second table sets this beside the model Serf publishes. Progress goes to stderr;
`--out FILE` also appends the tables.

    .venv/bin/python bench/sim_scale.py --n 100,1000
    .venv/bin/python bench/sim_scale.py --n 10000 --start formed --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import math
import multiprocessing
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshd.sim.cluster import UPDATED, Cluster

CONVERGE_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 3600.0
UPDATE_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 10.0
JOIN = "join"
FORMED = "formed"
# Peak RSS per (observer, member) pair, measured: a join storm at N = 5,000 (11.85 GB)
# builds every table and member view record by record; a formed start forks one table and
# shares one view, leaving each node its maps (N = 10,000: 12.9 GB, N = 4,000: 2.6 GB).
# N² of them is what limits N.
BYTES_PER_PAIR = {JOIN: 480, FORMED: 160}
SERF_SOURCE = ("Serf documentation, Convergence Simulator "
               "(https://www.serf.io/docs/internals/simulator.html; the model is "
               "`convergenceAtRound` in hashicorp/serf website/source/assets/javascripts/_simulator.js)")
SERF_INTERVAL_S = 0.2
SERF_FANOUT = 3
SERF_PACKET_BYTES = 1400
SERF_MAX_ROUNDS = 100


@dataclass(frozen=True, slots=True)
class Result:
    n: int
    start: str
    converge_s: float | None  # None: started formed
    drain_s: float | None
    update_999_s: float
    update_all_s: float
    idle_msgs: float        # per node per second, datagrams and stream frames
    idle_bytes: float       # per node per second, the mean
    idle_bytes_max: float   # the busiest node's
    wall_s: float
    rss_mb: float
    periods_per_s: float    # 1 / probe_interval_s


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def watched(predicate: Callable[[], bool], cluster: Cluster, what: str) -> Callable[[], bool]:
    """The same predicate, printing progress every PROGRESS_EVERY_S of wall time."""
    last = [time.monotonic()]

    def check() -> bool:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            log(f"  N={len(cluster.nodes)}: waiting for {what}, virtual t={cluster.now:.0f} s")
        return predicate()

    return check


def run_until(cluster: Cluster, predicate: Callable[[], bool], what: str, timeout_s: float,
              step_s: float) -> float:
    at = cluster.run_until(watched(predicate, cluster, what), timeout_s, step_s)
    if at is None:
        raise SystemExit(f"N={len(cluster.nodes)}: no {what} within {timeout_s:g} virtual s")
    return at


def update_spread(cluster: Cluster) -> tuple[float, float]:
    """Seconds until 99.9% and 100% of the other nodes saw one node's new tags."""
    n = len(cluster.nodes)
    subject = n // 2
    changed_at = cluster.now
    cluster.set_tags(subject, {"bench": "changed"})
    everyone = n - 1
    run_until(cluster, lambda: len(cluster.first_seen(subject, UPDATED, changed_at)) >= everyone,
              "the update to reach everyone", UPDATE_TIMEOUT_S, 0.1)
    times = sorted(cluster.first_seen(subject, UPDATED, changed_at).values())
    nodes_999 = -(-999 * n // 1000)     # ceil(99.9% of all n nodes), the subject being one
    return times[nodes_999 - 2] - changed_at, times[-1] - changed_at


def measure(n: int, start: str, seed: int, idle_s: float) -> Result:
    """One cluster, started one way: idle traffic, then one update's spread."""
    started = time.monotonic()
    cluster = Cluster(n, seed)
    log(f"N={n} {start}: {n} engines built in {time.monotonic() - started:.1f} s")
    converged = drained = None
    if start == JOIN:
        cluster.join_all()
        converged = run_until(cluster, cluster.converged, "convergence", CONVERGE_TIMEOUT_S, 1.0)
        log(f"N={n} {start}: converged at virtual {converged:.1f} s "
            f"(wall {time.monotonic() - started:.0f} s); draining piggyback queues")
        drained = run_until(cluster, cluster.drained, "drained queues", DRAIN_TIMEOUT_S, 5.0)
    else:
        cluster.start_formed()
        log(f"N={n} {start}: formed (wall {time.monotonic() - started:.0f} s)")
    # Tables quiet long enough that pings stop carrying the table hash and introductions
    # (UNSETTLED_PROBES), and every timer fired once: what is left is the idle protocol.
    cluster.run_for(cluster.tuning.push_pull_interval_s)
    if not cluster.converged():
        raise SystemExit(f"N={n} {start}: the cluster fell apart before the idle window")
    log(f"N={n} {start}: idle window of {idle_s:g} s")
    before = cluster.sent()
    cluster.run_for(idle_s)
    rates = [(after - then).rate(idle_s) for after, then in zip(cluster.sent(), before)]
    log(f"N={n} {start}: tags change on one node")
    at_999, at_all = update_spread(cluster)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Result(n, start, converged, None if drained is None or converged is None
                  else drained - converged, at_999, at_all,
                  sum(msgs for msgs, _ in rates) / n, sum(b for _, b in rates) / n,
                  max(b for _, b in rates), time.monotonic() - started, rss_mb,
                  1.0 / cluster.tuning.probe_interval_s)


def measure_alone(n: int, start: str, seed: int, idle_s: float) -> Result:
    """`measure` in a child process: its peak RSS is this run's alone, and its memory is
    the system's again when it ends."""
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(measure, n, start, seed, idle_s).result()


# --- Serf's published model --------------------------------------------------------------


def serf_converged_fraction(n: int, rounds: int) -> float:
    """Serf's convergence simulator: a logistic epidemic, no loss, no failed nodes."""
    contact = SERF_FANOUT / n * 0.5
    infected = n / (1 + (n + 1) * math.exp(-contact * n * rounds))
    return infected / n


def serf_seconds_to(n: int, fraction: float) -> float | None:
    """The first plotted round at which the model reaches `fraction`, in seconds."""
    for rounds in range(SERF_MAX_ROUNDS):
        if serf_converged_fraction(n, rounds) >= fraction:
            return rounds * SERF_INTERVAL_S
    return None


def serf_max_bytes_per_s() -> float:
    """Serf's 'estimated max bandwidth': full packets to `fanout` nodes every round, in and out."""
    return SERF_PACKET_BYTES * SERF_FANOUT / SERF_INTERVAL_S * 2


# --- output ------------------------------------------------------------------------------


def fmt_s(seconds: float | None, periods_per_s: float | None = None, digits: int = 2) -> str:
    if seconds is None:
        return "n/a"
    if periods_per_s is None:
        return f"{seconds:.{digits}f} s"
    return f"{seconds:.{digits}f} s ({seconds * periods_per_s:.{digits}f} p)"


def fmt_update(seconds: float, periods_per_s: float | None = None) -> str:
    """To the millisecond: an update spreads at network speed, not per gossip round."""
    return fmt_s(seconds, periods_per_s, digits=3)


def render(sizes: tuple[int, ...], results: dict[tuple[int, str], Result],
           skipped: dict[tuple[int, str], str], seed: int, idle_s: float) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        (f"### sim_scale ({stamp}, Python {platform.python_version()}, {platform.machine()}, "
         f"seed {seed}, lan profile, no loss)"),
        "",
        ("| N | start | converged after join storm | queues drained after | update to 99.9% | "
         "update to 100% | idle msgs/node/s | idle bytes/node/s (max) | wall | peak RSS |"),
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.values():
        storm = ("(started formed) | " if r.converge_s is None or r.drain_s is None
                 else f"{fmt_s(r.converge_s)} | {r.drain_s:.0f} s")
        lines.append(
            f"| {r.n:,} | {r.start} | {storm} | "
            f"{fmt_update(r.update_999_s, r.periods_per_s)} | "
            f"{fmt_update(r.update_all_s, r.periods_per_s)} | "
            f"{r.idle_msgs:.2f} | {r.idle_bytes:,.0f} ({r.idle_bytes_max:,.0f}) | {r.wall_s:.0f} s | "
            f"{r.rss_mb:,.0f} MB |")
    lines += [f"| {n:,} | {start} | {reason} | | | | | | | |"
              for (n, start), reason in skipped.items()]
    lines += [
        "",
        (f"p = protocol periods (probe intervals). Idle: a {idle_s:g} s window, datagrams plus "
         "push-pull stream frames, sent per node, from one push-pull interval after every "
         "piggyback queue emptied (join) or after the start (formed: every node started with "
         "the converged table and member view). Update: one node's tags change, until every "
         "other node emits `MemberUpdated`; meshd pushes a new record on at once (one-way latency 0.5 ms "
         "+ Exp(0.5 ms) here), so it spreads at network speed, not per gossip round."),
        "",
        ("| N | Serf model 99.9% | Serf model 99.99% (plot end) | meshd 99.9% | meshd 100% | "
         "Serf est. max bytes/node/s | meshd idle bytes/node/s |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        ours = [r for r in results.values() if r.n == n]
        lines.append(
            f"| {n:,} | {fmt_s(serf_seconds_to(n, 0.999))} | {fmt_s(serf_seconds_to(n, 0.9999))} | "
            f"{' / '.join(fmt_update(r.update_999_s) for r in ours) or 'skipped'} | "
            f"{' / '.join(fmt_update(r.update_all_s) for r in ours) or 'skipped'} | "
            f"{serf_max_bytes_per_s():,.0f} | "
            f"{' / '.join(f'{r.idle_bytes:,.0f}' for r in ours) or 'skipped'} |")
    lines += [
        "",
        ("meshd cells with two figures: join / formed start. "
         f"Serf columns: the model of {SERF_SOURCE}, with its defaults gossip interval "
         f"{SERF_INTERVAL_S} s and fanout {SERF_FANOUT}, 0% loss, 0% failed nodes; an analytic "
         "epidemic curve, not a measurement, which never reaches 100% (the page plots to 99.99%). "
         "Its bandwidth is the page's estimated maximum: 1,400-byte packets to every fanout "
         "target each interval, counted in and out; not a measured idle rate."),
    ]
    return "\n".join(lines) + "\n"


def affordable(n: int, start: str) -> str | None:
    """Why N cannot run on this machine (memory grows with N²), or None if it can."""
    need = BYTES_PER_PAIR[start] * n * n
    try:
        meminfo = Path("/proc/meminfo").read_text()
        avail = int(next(line.split()[1] for line in meminfo.splitlines()
                         if line.startswith("MemAvailable:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return None
    if need <= 0.9 * avail:
        return None
    return (f"skipped: needs about {need / 2**30:.0f} GiB "
            f"({BYTES_PER_PAIR[start]:,} B per node pair), "
            f"{avail / 2**30:.0f} GiB available")


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or any(n < 3 for n in sizes):
        raise argparse.ArgumentTypeError("sizes are integers >= 3, comma separated")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=_sizes, default=(100, 1000),
                        help="cluster sizes, comma separated (default 100,1000; 10000 takes "
                             "8-13 minutes and 13 GB started formed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle-s", type=float, default=120.0, help="idle window (default 120 s)")
    parser.add_argument("--start", choices=(JOIN, FORMED, "both"), default="both",
                        help="how clusters start: a join storm, formed already, or each "
                             "(default both; a join storm at N = 10,000 does not fit in RAM)")
    parser.add_argument("--out", help="also append the tables to this markdown file")
    args = parser.parse_args(argv)
    starts = (JOIN, FORMED) if args.start == "both" else (args.start,)

    results: dict[tuple[int, str], Result] = {}
    skipped: dict[tuple[int, str], str] = {}
    for n in args.n:
        for start in starts:
            reason = affordable(n, start)
            if reason is not None:
                log(f"N={n} {start}: {reason}")
                skipped[n, start] = reason
            else:
                results[n, start] = measure_alone(n, start, args.seed, args.idle_s)
    publish(render(args.n, results, skipped, args.seed, args.idle_s), args.out)
    return 0


def publish(text: str, out: str | None) -> None:
    """Print the tables; with `--out`, also append them to that markdown file."""
    print(text)
    if out:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
