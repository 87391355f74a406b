"""The simulated network: what happens to each packet between two nodes.

Like trio's `FakeNet.route_packet`, one object decides every packet's fate,
from the cluster's seeded `random.Random`: a latency drawn per packet (so
packets reorder), random loss, extra loss on chosen directed links
(asymmetric: a→b may lose what b→a does not), and partitions into groups
that cannot reach each other until healed. Nodes are plain integers here;
crashes and slow CPUs belong to the nodes, not the wires (see `cluster.py`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TCP_MIN_RTO_S = 0.2     # Linux's minimum retransmission timeout
TCP_MAX_RETRIES = 6


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay: a fixed floor plus an exponential tail, capped.

    The exponential tail gives the occasional slow packet that makes probe
    timeouts matter; the cap keeps every delivery inside a known bound.
    """

    base_s: float = 0.0005
    jitter_s: float = 0.0005    # mean of the exponential tail
    max_s: float = 0.05

    def sample(self, rng: random.Random) -> float:
        tail = rng.expovariate(1.0 / self.jitter_s) if self.jitter_s > 0 else 0.0
        return min(self.base_s + tail, self.max_s)


@dataclass(frozen=True, slots=True)
class NetModel:
    """How a fresh network behaves: per-packet latency and random datagram loss."""

    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0


class Network:
    """Decides, per packet, whether it arrives and after how long."""

    def __init__(self, model: NetModel, rng: random.Random) -> None:
        self.latency = model.latency
        self.loss = model.loss
        self._rng = rng
        self._link_loss: dict[tuple[int, int], float] = {}
        self._group: dict[int, int] = {}

    def set_link_loss(self, src: int, dst: int, loss: float) -> None:
        """Extra loss on datagrams from `src` to `dst` only (0 removes it)."""
        if loss:
            self._link_loss[(src, dst)] = loss
        else:
            self._link_loss.pop((src, dst), None)

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Split nodes into groups that reach only their own; unlisted nodes form one more group."""
        self._group = {node: index for index, group in enumerate(groups, start=1) for node in group}

    def heal(self) -> None:
        self._group = {}

    def reachable(self, src: int, dst: int) -> bool:
        return self._group.get(src, 0) == self._group.get(dst, 0)

    def datagram_delay(self, src: int, dst: int) -> float | None:
        """Seconds until a datagram arrives, or None if it is lost."""
        if not self.reachable(src, dst):
            return None
        loss = self.loss + self._link_loss.get((src, dst), 0.0)
        if loss and self._rng.random() < loss:
            return None
        return self.latency.sample(self._rng)

    def stream_delay(self, src: int, dst: int) -> float | None:
        """Seconds until a stream frame arrives, or None if the two are cut off.

        A stream loses nothing, but each lost segment costs a TCP retransmit
        timeout (doubling, as TCP backs off), so loss shows up as delay.
        """
        if not self.reachable(src, dst):
            return None
        delay = self.latency.sample(self._rng)
        loss = self.loss + self._link_loss.get((src, dst), 0.0)
        rto = TCP_MIN_RTO_S
        for _ in range(TCP_MAX_RETRIES):
            if not loss or self._rng.random() >= loss:
                break
            delay += rto
            rto *= 2
        return delay
