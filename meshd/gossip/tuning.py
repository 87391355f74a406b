"""Gossip timing: profiles and the scale laws that grow with cluster size (pure).

Profiles follow memberlist's idea: `lan()` is the reference, `wan()` and
`local()` override a handful of fields. The formulas are pure functions of
`n` so they can be property-tested and shared with the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from meshd.errors import ConfigError

PROFILES = ("lan", "wan", "local")


@dataclass(frozen=True, slots=True)
class GossipTuning:
    """Timers and multipliers; units ride in the names."""

    # One probe per interval. memberlist's LAN default is 1 s; meshd's ring probes every
    # member once a round and confirmed suspicions end early, so at 2 s a crash is still
    # seen by all in 2.4-3.0 s (kinship at 1 s: 6-8 s), while an idle node, whose CPU and
    # bytes are its probe rounds, costs half (bench/RESULTS.md, session 12).
    probe_interval_s: float = 2.0
    probe_timeout_s: float = 0.4         # direct ack wait before indirect probes (> a LAN RTT)
    indirect_timeout_s: float = 0.5     # wait for ping-req relays before suspecting
    indirect_checks: int = 3             # members asked to probe on our behalf
    suspicion_min_s: float = 0.5         # floor once enough independent confirmations arrived
    suspicion_mult: float = 4.0          # max timeout = mult * log10(n) * probe_interval
    confirmations: int = 2               # independent confirmations that shrink to the floor
    verify_probes: int = 6               # expected members that re-probe a fresh suspect
    retransmit_mult: int = 4             # piggyback limit = mult * ceil(log10(n + 1)); at 2 a
                                         # refutation under 10% loss missed some nodes (sim test)
    fanout: int = 3                      # eager push and gossip targets per round
    own_push_max: int = 128              # members our own new record goes to at once
    gossip_interval_s: float = 0.2       # flush piggyback queue to random members
    push_pull_interval_s: float = 20.0   # periodic table-hash check with one random member
    awareness_max: int = 8               # Lifeguard local-health score cap
    reap_s: float = 3600.0               # dead/left members' records are collected after this
    hello_skew_s: float = 30.0           # accepted age of a join hello
    join_retry_s: float = 1.0            # resend hellos to seeds until one answers

    @classmethod
    def lan(cls) -> GossipTuning:
        return cls()

    @classmethod
    def wan(cls) -> GossipTuning:
        return replace(cls(), probe_interval_s=5.0, probe_timeout_s=2.0, indirect_timeout_s=2.5,
                       suspicion_min_s=6.0, suspicion_mult=6.0, fanout=4, gossip_interval_s=0.5,
                       push_pull_interval_s=60.0, join_retry_s=3.0)

    @classmethod
    def local(cls) -> GossipTuning:
        return replace(cls(), probe_interval_s=0.5, probe_timeout_s=0.15, indirect_timeout_s=0.2,
                       suspicion_min_s=0.3, suspicion_mult=3.0, gossip_interval_s=0.1,
                       push_pull_interval_s=15.0, join_retry_s=0.5)

    @classmethod
    def profile(cls, name: str) -> GossipTuning:
        if name not in PROFILES:
            raise ConfigError(f"gossip.profile: {name!r} is not one of {', '.join(PROFILES)}")
        return getattr(cls, name)()


def retransmit_limit(mult: int, n: int) -> int:
    """How many times to piggyback one update: enough to reach all n with high probability."""
    return mult * math.ceil(math.log10(n + 1))


def eager_fanout(fanout: int, n: int) -> int:
    """Members a fresh update is pushed to at once, by its origin and by each node that
    first hears it. If every one of n nodes pushes to f random others, a node is missed
    by all of them with probability about e^-f, so about n·e^-f nodes wait for a gossip
    round; f = ln n + 2 keeps that under 0.14 at any n (a push epidemic needs ln n + c
    to reach everyone). `fanout` is the floor."""
    return max(fanout, math.ceil(math.log(max(1, n)) + 2))


def own_fanout(fanout: int, n: int, cap: int) -> int:
    """Members a node pushes its own fresh record to at once: every other member, up to
    `cap`, and never fewer than twice the relay fanout. A node's own updates are rare
    (tags, a refutation, its leave) and each costs it one datagram per target, while every
    hop of an epidemic costs a network and scheduling delay, and every relay a datagram
    each receiver must handle: in one hop a refutation ends the suspicions against it and
    a tag change reaches every watcher. Beyond the cap, the members it reached relay it."""
    return max(2 * eager_fanout(fanout, n), min(n - 1, cap))


def suspicion_max_s(mult: float, n: int, interval_s: float) -> float:
    """The timeout a lone suspicion (no confirmations) waits: grows with log10 n."""
    return mult * max(1.0, math.log10(max(1, n))) * interval_s


def remaining_suspicion_s(confirmations: int, expected: int, elapsed_s: float,
                          min_s: float, max_s: float) -> float:
    """Lifeguard's shrinking timeout: each independent confirmation moves it toward `min_s`."""
    if expected <= 0 or confirmations >= expected:
        frac = 1.0
    else:
        frac = math.log(confirmations + 1) / math.log(expected + 1)
    timeout = max(min_s, max_s - frac * (max_s - min_s))
    return timeout - elapsed_s


def scaled_timeout(base_s: float, awareness: int) -> float:
    """Lifeguard local health: a node that misses acks itself waits longer before accusing."""
    return base_s * (awareness + 1)
