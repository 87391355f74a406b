"""A cluster split in two for two minutes heals into one table and one all-alive view."""

from __future__ import annotations

import pytest

from meshd.gossip.events import DEAD
from meshd.sim.cluster import Cluster

PARTITION_N = 40
PARTITION_S = 120.0
# Each side holds the other dead. A node learns it must refute only from a claim
# carried by a push-pull (either direction) with the other side; every node runs
# one per `push_pull_interval_s`, towards a dead member half the time, so nearly
# every node is reached within two intervals; the third covers the unlucky tail,
# after which the refutations' records flood in well under a period.
HEAL_BOUND_INTERVALS = 3


@pytest.mark.parametrize("seed", [1, 2])
def test_two_halves_heal_into_one_table_with_everyone_alive(seed: int) -> None:
    cluster = Cluster(PARTITION_N, seed)
    cluster.form()
    halves = [range(0, PARTITION_N, 2), range(1, PARTITION_N, 2)]
    cluster.partition(halves)
    cluster.run_for(PARTITION_S)
    assert all(cluster.state(a, b) == DEAD for side, other in (halves, halves[::-1])
               for a in side for b in other), f"seed {seed}: the halves did not part"
    cluster.heal()
    healed_at = cluster.now
    bound = HEAL_BOUND_INTERVALS * cluster.tuning.push_pull_interval_s
    at = cluster.run_until(cluster.converged, timeout_s=2 * bound, step_s=0.5)
    assert at is not None, f"seed {seed}: not converged {2 * bound} s after the heal"
    took = cluster.periods(at - healed_at)
    print(f"seed {seed}: converged {took:.1f} periods after the heal "
          f"({cluster.streams_failed} push-pulls cut by the partition)")
    assert took <= cluster.periods(bound), f"seed {seed}: {took:.1f} periods"
    assert cluster.false_deaths > 0    # the partition was real: both sides saw deaths
