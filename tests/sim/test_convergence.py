"""Join storms converge within a bounded number of protocol periods, and a seed replays a run.

Bounds are in protocol periods (`Cluster.periods`: seconds / probe_interval_s)
so they read the same whatever the profile's interval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.errors import UsageError
from meshd.gossip.events import ALIVE, DEAD, SUSPECT
from meshd.sim.cluster import Cluster, Traffic
from meshd.sim.net import NetModel

STORM_N = 200
# All at once: each joiner's first push-pull with the seed already carries every record
# the seed holds, and the seed pushes each newcomer's record at once; what the first
# syncs miss spreads as gossip. Two periods leave room for hellos that arrive late.
STORM_BOUND_PERIODS = 2.0
ROLLING_JOIN_S = 10.0           # the same 200 nodes, one every 50 ms


def test_join_storm_of_200_converges_within_two_periods() -> None:
    seed = 1
    cluster = Cluster(STORM_N, seed)
    cluster.join_all()
    at = cluster.run_until(cluster.converged, timeout_s=60.0, step_s=0.1)
    assert at is not None, f"seed {seed}: no convergence within 60 s"
    print(f"seed {seed}: {STORM_N} joined at once, converged after {cluster.periods(at):.1f} periods")
    assert cluster.periods(at) <= STORM_BOUND_PERIODS, f"seed {seed}: {at:.1f} s"
    assert all(len(node.engine.members) == STORM_N - 1 for node in cluster.live() if node.engine)


def test_a_cluster_started_formed_runs_like_one_that_joined() -> None:
    """`start_formed` (how sim_scale reaches N = 10,000) starts where a join storm ends:
    converged at once, the same idle traffic per node, an update and a crash reaching
    everyone, and no engine changing the member view they all share (the tables' sharing
    has a property test of its own)."""
    n, idle_s = 60, 60.0
    joined, formed = Cluster(n, 4), Cluster(n, 4)
    joined.form()
    formed.start_formed()
    assert formed.converged()
    first = formed.nodes[0].engine
    assert first is not None
    shared = dict(first.members)
    rates = []
    for cluster in (joined, formed):
        cluster.run_until(cluster.drained, timeout_s=60.0)
        cluster.run_for(cluster.tuning.push_pull_interval_s)
        before = sum(cluster.sent(), Traffic())
        cluster.run_for(idle_s)
        rates.append((sum(cluster.sent(), Traffic()) - before).rate(idle_s * n))
    (join_msgs, join_bytes), (formed_msgs, formed_bytes) = rates
    assert formed_msgs == pytest.approx(join_msgs, rel=0.02)
    assert formed_bytes == pytest.approx(join_bytes, rel=0.05)
    version = formed.set_tags(7, {"changed": "yes"})
    formed.crash(9)
    formed.run_for(15.0)
    subject = formed.nodes[7].node_id
    views = [node.engine.members[subject] for node in formed.live()
             if node.engine is not None and node.slot != 7]
    assert len(views) == n - 2 and all(m.incarnation == version for m in views)
    assert formed.all_see(9, DEAD)
    assert formed.false_deaths == 0 and formed.false_suspicions == 0
    assert all(m.state == ALIVE and m.incarnation < version for m in shared.values())


def test_start_formed_refuses_a_table_without_our_record_or_a_member_not_alive() -> None:
    cluster = Cluster(3, 1)
    engine = cluster._new_engine(cluster.nodes[0])
    with pytest.raises(UsageError, match="our current node record"):
        engine.start_formed({}, cluster.now, cluster.wall_ms())
    cluster.start_formed()
    first = cluster.nodes[0].engine
    assert first is not None
    view = dict(first.members)
    suspect = next(iter(view))
    view[suspect] = dataclasses.replace(view[suspect], state=SUSPECT)
    again = cluster._new_engine(cluster.nodes[0], first.table.fork())
    with pytest.raises(UsageError, match="all alive"):
        again.start_formed(view, cluster.now, cluster.wall_ms())


@pytest.mark.parametrize("seed", [2, 3])
def test_rolling_join_of_200_converges_within_one_anti_entropy_interval(seed: int) -> None:
    """Records that the eager flood misses (about e^-fanout of nodes) wait in piggyback
    queues holding every other newcomer's record, three to a datagram; whatever is still
    missing then, each node's next push-pull repairs, and every node runs one within
    `push_pull_interval_s`. So: converged within that interval after the last join.
    """
    cluster = Cluster(STORM_N, seed)
    stagger_s = ROLLING_JOIN_S / (STORM_N - 1)
    cluster.join_all(stagger_s)
    cluster.run_for(ROLLING_JOIN_S)
    at = cluster.run_until(cluster.converged, timeout_s=120.0, step_s=0.25)
    bound = cluster.periods(cluster.tuning.push_pull_interval_s)
    assert at is not None, f"seed {seed}: no convergence within 120 s of the last join"
    took = cluster.periods(at - ROLLING_JOIN_S)
    print(f"seed {seed}: converged {took:.1f} periods after the last of {STORM_N} joins")
    assert took <= bound, f"seed {seed}: {took:.1f} periods after the last join, bound {bound}"


def eventful_run_digest(seed: int) -> str:
    """A run that touches every random choice the simulator makes, as one digest.

    Loss (and a lossy link), a crash and a restart, a partition and its heal, a
    starved node and a tags change: the log of everything every node saw, the final table hashes
    and per-node traffic all go into the digest.
    """
    cluster = Cluster(30, seed, net=NetModel(loss=0.05))
    cluster.form()
    cluster.starve(3, 0.2)
    cluster.set_link_loss(1, 2, 0.5)
    cluster.crash(7)
    cluster.run_for(8.0)
    cluster.partition([range(15)])
    cluster.set_tags(20, {"role": "db"})
    cluster.run_for(20.0)
    cluster.heal()
    cluster.restart(7)
    cluster.run_for(30.0)
    digest = hashlib.sha256(repr(cluster.log).encode())
    for node in cluster.nodes:
        assert node.engine is not None
        digest.update(node.engine.table.table_hash)
        digest.update(repr(cluster.traffic(node.slot)).encode())
    return digest.hexdigest()


def test_same_seed_replays_the_same_run_in_another_process() -> None:
    """Twice in-process, then in a child with another hash seed: no order may depend
    on `hash()` (sets of bytes, say), or a failing seed would not replay elsewhere."""
    here = eventful_run_digest(11)
    assert eventful_run_digest(11) == here
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c",
         "from tests.sim.test_convergence import eventful_run_digest as d; print(d(11))"],
        cwd=root, env={**os.environ, "PYTHONHASHSEED": "4242"}, capture_output=True, text=True,
        check=True, timeout=120)
    assert child.stdout.strip() == here
    assert eventful_run_digest(12) != here
