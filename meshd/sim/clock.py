"""Virtual time: one event heap that the whole simulated cluster shares.

Nothing waits on a real clock (trio's `MockClock` with autojump, taken to its
end): `run_until(t)` pops due events in `(time, sequence)` order and jumps
`now` straight to each one. The sequence number breaks ties by scheduling
order, so two runs that schedule the same things see them in the same order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

Callback = Callable[..., None]


class VirtualClock:
    """An event heap and the current virtual time in seconds."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now = start_s
        self._heap: list[tuple[float, int, Callback, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.processed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, at_s: float, callback: Callback, *args: Any) -> None:
        """Run `callback(*args)` at virtual time `at_s` (never in the past)."""
        heapq.heappush(self._heap, (max(at_s, self.now), next(self._seq), callback, args))

    def call_later(self, delay_s: float, callback: Callback, *args: Any) -> None:
        self.call_at(self.now + delay_s, callback, *args)

    def run_until(self, until_s: float) -> None:
        """Process every event due at or before `until_s`, then stand at `until_s`.

        Bounded in virtual time: events scheduled beyond `until_s` wait for the
        next call, so a protocol that keeps itself busy cannot spin forever.
        """
        heap = self._heap
        while heap and heap[0][0] <= until_s:
            at_s, _, callback, args = heapq.heappop(heap)
            self.now = at_s
            self.processed += 1
            callback(*args)
        self.now = max(self.now, until_s)
