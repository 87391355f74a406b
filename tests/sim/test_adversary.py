"""One certified but malicious member cannot get anyone evicted with forged claims.

The adversary is a full member (a valid certificate, a running engine that
answers probes) which, every probe interval for four minutes, signs a
`suspect` and a `dead` claim against every other member with its own key and
sends them straight to everyone except the victim, so the victim hears of it
as late as the honest relays allow. It drives its own engine's `_send` rather
than hand-building datagrams: the claims ride sealed GOSSIP datagrams exactly
as an honest node's would, and the test does not depend on the datagram layout.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.gossip.claims import CLAIM_DEAD, CLAIM_SUSPECT, Claim
from meshd.gossip.engine import ITEM_CLAIM, Gossip
from meshd.gossip.events import ALIVE, SUSPECT
from meshd.sim.cluster import Cluster
from meshd.wire import MsgType

ADVERSARY_N = 16
ATTACK_S = 240.0
ADVERSARY = 0


def forger(wall_ms: int, inflate: int) -> Callable[[Gossip], None]:
    """An attack round: accuse every live member at the incarnation held for it, plus `inflate`."""

    def attack(engine: Gossip) -> None:
        targets = [m for m in engine.members.values() if m.state in (ALIVE, SUSPECT)]
        for victim in targets:
            items = [[ITEM_CLAIM, Claim.make(engine.key, victim.node_id,
                                             victim.incarnation + inflate, kind, wall_ms).to_wire()]
                     for kind in (CLAIM_SUSPECT, CLAIM_DEAD)]
            for recipient in targets:
                if recipient is not victim:
                    engine._send(recipient, MsgType.GOSSIP, {}, items)

    return attack


def run_attack(seed: int, inflate: int) -> Cluster:
    cluster = Cluster(ADVERSARY_N, seed)
    cluster.form()
    interval = cluster.tuning.probe_interval_s
    for _ in range(round(ATTACK_S / interval)):
        cluster.act(ADVERSARY, forger(cluster.wall_ms(), inflate))
        cluster.run_for(interval)
    return cluster


@pytest.mark.parametrize("seed", [1, 2])
def test_forged_claims_at_the_current_incarnation_evict_nobody(seed: int) -> None:
    """Each round makes every victim suspect everywhere and refute; one claimant never
    confirms itself, so the long timeout always outlasts the refutation."""
    cluster = run_attack(seed, inflate=0)
    print(f"seed {seed}: {cluster.false_suspicions} suspicion events, "
          f"{cluster.false_deaths} deaths in {ATTACK_S:.0f} s of forged claims")
    assert cluster.false_suspicions > 0, "the attack never landed: the test proves nothing"
    assert cluster.false_deaths == 0


def test_forged_claims_about_a_future_incarnation_are_ignored() -> None:
    """A claim about a record version nobody holds must not count: no refutation the
    victim can publish (versions follow its clock) would ever outbid it."""
    cluster = run_attack(3, inflate=10**9)
    assert cluster.false_deaths == 0
    assert cluster.false_suspicions == 0
    assert cluster.converged()
