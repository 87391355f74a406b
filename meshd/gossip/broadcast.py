"""A transmit-limited broadcast queue packed to a byte budget (sans-IO).

Each update is piggybacked on outgoing datagrams until it has been sent
`limit` times. Fresh updates go first (fewest transmits, then newest), and a
newer update about the same subject replaces the older one, so a node that
refutes twice never spends bandwidth on its stale refutation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Hashable

DEFAULT_MAX_ITEMS = 512


@dataclass(slots=True)
class _Item:
    subject: Hashable
    payload: Any
    size: int
    # [transmits, -seq]: ascending order is fewest sent, then newest. A list compares in C,
    # so ordering a full queue (every datagram sent, in a join storm) needs no Python key.
    rank: list[int]


_RANK = operator.attrgetter("rank")


class BroadcastQueue:
    """Updates waiting to be piggybacked; bounded in items."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.max_items = max_items
        self._items: dict[Hashable, _Item] = {}
        self._seq = 0
        self.dropped = 0
        # Best first, a snapshot: a push-pull merging hundreds of records into a full queue
        # evicts from one sort instead of scanning the queue per record. `take` changes
        # ranks, so it clears it; items pushed since are freshest, never the worst.
        self._eviction_order: list[_Item] = []

    def __len__(self) -> int:
        return len(self._items)

    def push(self, subject: Hashable, payload: Any, size: int) -> None:
        """Queue an update, replacing any older one about the same subject."""
        self._seq += 1
        self._items[subject] = _Item(subject, payload, size, [0, -self._seq])
        if len(self._items) > self.max_items:
            self._evict_worst()

    def _evict_worst(self) -> None:
        """Drop the most-sent, then oldest, update."""
        while True:
            if not self._eviction_order:
                self._eviction_order = sorted(self._items.values(), key=_RANK)
            worst = self._eviction_order.pop()
            if self._items.get(worst.subject) is worst:   # not replaced or taken out since
                del self._items[worst.subject]
                self.dropped += 1
                return

    def discard(self, subject: Hashable) -> None:
        self._items.pop(subject, None)

    def take(self, budget: int, limit: int) -> list[Any]:
        """Payloads that fit in `budget` bytes, freshest first; each counts one transmit."""
        chosen = []
        self._eviction_order = []
        for item in sorted(self._items.values(), key=_RANK):
            if item.size > budget:
                continue
            budget -= item.size
            chosen.append(item.payload)
            item.rank[0] += 1
            if item.rank[0] >= limit:
                del self._items[item.subject]
        return chosen
