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

    def __len__(self) -> int:
        return len(self._items)

    def push(self, subject: Hashable, payload: Any, size: int) -> None:
        """Queue an update, replacing any older one about the same subject."""
        self._seq += 1
        self._items[subject] = _Item(subject, payload, size, [0, -self._seq])
        if len(self._items) > self.max_items:
            worst = max(self._items.values(), key=_RANK)
            del self._items[worst.subject]
            self.dropped += 1

    def discard(self, subject: Hashable) -> None:
        self._items.pop(subject, None)

    def take(self, budget: int, limit: int) -> list[Any]:
        """Payloads that fit in `budget` bytes, freshest first; each counts one transmit."""
        chosen = []
        for item in sorted(self._items.values(), key=_RANK):
            if item.size > budget:
                continue
            budget -= item.size
            chosen.append(item.payload)
            item.rank[0] += 1
            if item.rank[0] >= limit:
                del self._items[item.subject]
        return chosen
