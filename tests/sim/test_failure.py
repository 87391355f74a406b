"""Crashes are found within the lan profile's bounds; loss and slow nodes kill nobody; restarts win.

Bounds are formulas of `GossipTuning`, checked in protocol periods.
"""

from __future__ import annotations

import statistics

import pytest

from meshd.gossip.events import ALIVE, DEAD, SUSPECT
from meshd.gossip.tuning import GossipTuning, suspicion_max_s
from meshd.sim.cluster import Cluster

DETECT_N = 50
DETECT_SEEDS = range(1, 9)
PROPAGATION_SLACK_S = 0.5       # a claim's flood plus a gossip round or two, generously


def fast_detection_s(t: GossipTuning) -> float:
    """Lifeguard's fast path, the lan promise in docs/protocol.md, plus one period of slack.

    The victim's prober comes round within a probe interval; direct then indirect
    probes time out; verification probes (direct and indirect at once) bring
    confirmations within an indirect timeout, and everyone declares it dead once
    that and `suspicion_min_s` have passed since the first claim. The slack
    period covers a crash that just missed its prober.
    """
    return (t.probe_interval_s + t.probe_timeout_s + t.indirect_timeout_s
            + max(t.indirect_timeout_s, t.suspicion_min_s) + t.probe_interval_s)


def guaranteed_detection_s(t: GossipTuning, n: int) -> float:
    """What holds even with no confirmation at all: the lone accuser's long timeout.

    The first probe comes within two intervals (the crash may follow its
    prober's turn, and the next prober may come late in its interval); then
    the probe timeouts, then at most `suspicion_max_s(n)` at every node.
    """
    return (2 * t.probe_interval_s + t.probe_timeout_s + t.indirect_timeout_s
            + suspicion_max_s(t.suspicion_mult, n, t.probe_interval_s) + PROPAGATION_SLACK_S)


def crash_detection_s(seed: int) -> float:
    """Crash one node of a settled cluster; how long until the last live node saw it dead."""
    cluster = Cluster(DETECT_N, seed)
    cluster.form()
    cluster.run_for(10.0 + seed / 10)      # settle; crash at a different phase per seed
    victim = DETECT_N // 2
    cluster.crash(victim)
    crashed_at = cluster.now
    cluster.run_for(guaranteed_detection_s(cluster.tuning, DETECT_N) + 1.0)
    seen = cluster.first_seen(victim, DEAD, crashed_at)
    assert len(seen) == DETECT_N - 1, f"seed {seed}: only {len(seen)} nodes saw the crash"
    assert cluster.false_deaths == 0, f"seed {seed}"
    return cluster.periods(max(seen.values()) - crashed_at)


def test_crash_is_seen_dead_by_every_node_within_the_lan_bounds() -> None:
    """Every seed within the guaranteed bound; the typical (median) seed on the fast path."""
    tuning = GossipTuning.lan()
    periods = {seed: crash_detection_s(seed) for seed in DETECT_SEEDS}
    hard = guaranteed_detection_s(tuning, DETECT_N) / tuning.probe_interval_s
    fast = fast_detection_s(tuning) / tuning.probe_interval_s
    print(f"periods to detection by all: {', '.join(f'{p:.2f}' for p in periods.values())}"
          f" (fast path {fast:.2f}, guaranteed {hard:.2f})")
    late = {seed: round(p, 2) for seed, p in periods.items() if p > hard}
    assert not late, f"beyond the guaranteed {hard:.2f} periods: {late}"
    assert statistics.median(periods.values()) <= fast, f"fast path {fast:.2f}: {periods}"


LOSSY_N = 40
STARVED = 3
STARVE_S = 0.25


@pytest.mark.parametrize("seed", [1, 2])
def test_loss_and_a_starved_node_get_no_healthy_node_declared_dead(seed: int) -> None:
    """10% loss on every datagram and one node whose CPU is starved for ten minutes.

    The starved node handles every datagram and timer 250 ms late (a loaded VM
    or a GC-paused runtime; more than half the 400 ms probe timeout). Lost probes
    do raise suspicions (counted and printed), but the lone accuser's long
    timeout and verification probes must let every subject refute in time.
    """
    cluster = Cluster(LOSSY_N, seed)
    cluster.form()
    cluster.set_loss(0.10)
    cluster.starve(STARVED, STARVE_S)
    cluster.run_for(600.0)
    episodes = {(s.subject, s.incarnation) for s in cluster.log if s.state == SUSPECT}
    print(f"seed {seed}: {len(episodes)} false suspicions (subject, incarnation) about "
          f"{len({subject for subject, _ in episodes})} of {LOSSY_N} nodes in 600 s, "
          f"{cluster.false_suspicions} observer events, {cluster.false_deaths} deaths")
    assert cluster.false_deaths == 0, f"seed {seed}: {cluster.false_deaths} false deaths"


RESTART_N = 40
RESTART_BOUND_PERIODS = 2.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restarted_node_outbids_rumours_of_its_death(seed: int) -> None:
    """Crash, wait until all see it dead, restart it half a second later (its dead
    claims still being gossiped): its first record is newer than every claim, so all
    see it alive within two periods (hello, push-pull, one flood) and nobody sees it
    dead again.
    """
    cluster = Cluster(RESTART_N, seed)
    cluster.form()
    cluster.run_for(5.0)
    victim = 7
    cluster.crash(victim)
    assert cluster.run_until(lambda: cluster.all_see(victim, DEAD), 30.0, 0.1) is not None
    dead_incarnation = max(s.incarnation for s in cluster.log
                           if s.subject == victim and s.state == DEAD)
    cluster.run_for(0.5)
    cluster.restart(victim)
    restarted_at = cluster.now
    back = cluster.run_until(lambda: cluster.all_see(victim, ALIVE), 30.0, 0.05)
    assert back is not None and cluster.periods(back - restarted_at) <= RESTART_BOUND_PERIODS, (
        f"seed {seed}: back after {back} (restart at {restarted_at:.2f})")
    cluster.run_for(30.0)
    again = cluster.first_seen(victim, DEAD, restarted_at)
    assert not again, f"seed {seed}: seen dead again by {sorted(again)}"
    alive = [s for s in cluster.log if s.subject == victim and s.t_s >= restarted_at]
    assert min(s.incarnation for s in alive) > dead_incarnation
