"""Properties of the gossip layer's pure parts: scale laws, broadcast queue, replay window."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.gossip.auth import WINDOW_BITS, ReplayWindow
from meshd.gossip.broadcast import BroadcastQueue
from meshd.gossip.tuning import (
    GossipTuning, eager_fanout, own_fanout, remaining_suspicion_s, retransmit_limit,
    scaled_timeout, suspicion_max_s,
)

small = settings(max_examples=200, deadline=None)


@small
@given(st.integers(0, 20), st.integers(1, 10), st.floats(0.1, 5), st.floats(5, 60))
def test_confirmations_only_ever_shorten_the_suspicion(k: int, expected: int, min_s: float,
                                                      max_s: float) -> None:
    fewer = remaining_suspicion_s(k, expected, 0.0, min_s, max_s)
    more = remaining_suspicion_s(k + 1, expected, 0.0, min_s, max_s)
    assert min_s - 1e-9 <= more <= fewer <= max_s + 1e-9


@small
@given(st.integers(0, 10), st.floats(0, 100))
def test_elapsed_time_counts_against_the_timeout(k: int, elapsed: float) -> None:
    full = remaining_suspicion_s(k, 3, 0.0, 1.0, 30.0)
    assert math.isclose(remaining_suspicion_s(k, 3, elapsed, 1.0, 30.0), full - elapsed)


def test_enough_confirmations_reach_the_floor_and_none_leaves_the_ceiling() -> None:
    assert remaining_suspicion_s(3, 3, 0.0, 1.0, 30.0) == 1.0
    assert remaining_suspicion_s(0, 3, 0.0, 1.0, 30.0) == 30.0


@small
@given(st.integers(1, 100_000))
def test_scale_laws_grow_with_the_cluster(n: int) -> None:
    assert retransmit_limit(4, n + 1) >= retransmit_limit(4, n) >= 4
    assert suspicion_max_s(4, n + 1, 1.0) >= suspicion_max_s(4, n, 1.0) >= 4.0
    assert eager_fanout(3, n + 1) >= eager_fanout(3, n) >= 3


@small
@given(st.integers(2, 100_000), st.integers(1, 8))
def test_eager_fanout_leaves_few_nodes_unreached(n: int, fanout: int) -> None:
    """n nodes each pushing to f random others miss a given node with probability
    (1 - f/(n-1))^(n-1) <= e^-f: the expected number missed stays small at any n."""
    f = eager_fanout(fanout, n)
    assert f >= fanout
    assert n * math.exp(-f) <= 0.14


@small
@given(st.integers(2, 100_000), st.integers(1, 8), st.integers(0, 1000))
def test_own_updates_reach_a_small_cluster_in_one_hop_and_cost_a_large_one_a_bounded_burst(
        n: int, fanout: int, cap: int) -> None:
    f = own_fanout(fanout, n, cap)
    assert f >= 2 * eager_fanout(fanout, n)
    assert f >= min(n - 1, cap)
    assert f <= max(cap, 2 * eager_fanout(fanout, n))


def test_lifeguard_awareness_stretches_timeouts() -> None:
    assert scaled_timeout(0.5, 0) == 0.5
    assert scaled_timeout(0.5, 3) == 2.0


def test_profiles_are_ordered_by_patience() -> None:
    local, lan, wan = GossipTuning.local(), GossipTuning.lan(), GossipTuning.wan()
    assert local.probe_interval_s < lan.probe_interval_s < wan.probe_interval_s
    assert local.suspicion_min_s < lan.suspicion_min_s < wan.suspicion_min_s


def test_a_newer_update_about_a_subject_replaces_the_older() -> None:
    queue = BroadcastQueue()
    queue.push("n1", "old", 10)
    queue.push("n1", "new", 10)
    assert queue.take(1000, limit=5) == ["new"]


def test_freshest_first_within_the_byte_budget_and_transmit_limit() -> None:
    queue = BroadcastQueue()
    for i in range(5):
        queue.push(i, f"u{i}", 100)
    assert queue.take(250, limit=2) == ["u4", "u3"]
    assert queue.take(250, limit=2) == ["u2", "u1"]
    assert queue.take(250, limit=2) == ["u0", "u4"]
    assert queue.take(1000, limit=2) == ["u3", "u2", "u1", "u0"]
    assert len(queue) == 0


def test_the_queue_is_bounded() -> None:
    queue = BroadcastQueue(max_items=10)
    for i in range(25):
        queue.push(i, i, 1)
    assert len(queue) == 10 and queue.dropped == 15
    assert sorted(queue.take(100, limit=1)) == list(range(15, 25))


@small
@given(st.lists(st.integers(0, 2**62), max_size=300))
def test_each_sequence_number_is_accepted_at_most_once(seqs: list[int]) -> None:
    window = ReplayWindow()
    accepted = [s for s in seqs if window.check_and_set(s)]
    assert len(accepted) == len(set(accepted))


@small
@given(st.permutations(list(range(WINDOW_BITS))))
def test_reordering_within_the_window_is_tolerated(order: list[int]) -> None:
    window = ReplayWindow()
    assert all(window.check_and_set(1000 + s) for s in order)
    assert not any(window.check_and_set(1000 + s) for s in order)


def test_a_huge_jump_costs_no_memory_and_old_numbers_stay_rejected() -> None:
    window = ReplayWindow()
    assert window.check_and_set(5)
    assert window.check_and_set(2**62)
    assert not window.check_and_set(5)
    assert window.bits.bit_length() <= WINDOW_BITS
