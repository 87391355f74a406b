"""Hellos: the signed self-introductions joining rests on (sans-IO).

Before any MAC relationship exists the only datagram a node accepts from a
stranger is a hello, so it is checked as hostile input: a rate limit per
source address, a freshness window, replayed nonces, a reply that answers no
hello we sent, the signature, and a record inside that is not the sender's
are all refused before the table sees anything. What to do with one that
passes (merge its record, answer it, sync with the seed) is the engine's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import nacl.signing

from meshd import wire
from meshd.errors import RateLimitedError, StaleError, WrongOriginError
from meshd.identity import sign, verify
from meshd.table import parse_record
from meshd.wire import Domain, Fields, MsgType, Signed

HELLO_RATE_PER_S = 20.0
HELLO_BURST = 40.0
MAX_NONCES = 10_000        # hellos seen within the window (replays), and sources tracked
MAX_OUTSTANDING = 64       # hellos of ours a reply may answer
NONCE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Hello:
    """A hello that passed every check."""

    sender: bytes
    record: list[Any]      # the sender's own node record, in wire form
    nonce: bytes
    is_reply: bool


@dataclass(slots=True)
class _TokenBucket:
    tokens: float
    stamp: float


class Hellos:
    """Makes our hellos and checks theirs; `now` and `wall_ms` come from the engine."""

    def __init__(self, key: nacl.signing.SigningKey, skew_s: float, rng: random.Random) -> None:
        self._key = key
        self._node_id = bytes(key.verify_key)
        self._skew_s = skew_s
        self._rng = rng
        self._sent: dict[bytes, float] = {}      # our nonces a reply may name, with when
        self._seen: dict[bytes, float] = {}      # their nonces, so a replay is refused
        self._buckets: dict[str, _TokenBucket] = {}

    def make(self, record: list[Any], now: float, wall_ms: int,
             reply_to: bytes | None = None) -> bytes:
        """A hello carrying our node record (a reply when `reply_to` names theirs)."""
        nonce = self._rng.randbytes(NONCE_BYTES)
        body: dict[str, Any] = {"rec": record, "t": wall_ms, "nonce": nonce}
        if reply_to is not None:
            body["re"] = reply_to
        else:
            self._sent[nonce] = now
            if len(self._sent) > MAX_OUTSTANDING:
                for old in sorted(self._sent, key=self._sent.__getitem__)[:-MAX_OUTSTANDING]:
                    del self._sent[old]
        msg_type = MsgType.HELLO if reply_to is None else MsgType.HELLO_REPLY
        signed = sign(self._key, Domain.HELLO, wire.pack(body))
        return wire.encode_message(msg_type, self._node_id, signed.to_wire())

    def check(self, msg: wire.Message, now: float, wall_ms: int) -> Hello:
        """Every check a stranger's hello must pass, cheapest first; raises a `RemoteError`."""
        signed = Signed.from_wire(msg.body, "hello")
        f = Fields(wire.unpack(signed.payload, wire.MAX_BIN_BYTES), "hello")
        sent_ms, nonce = f.int("t"), f.bytes("nonce", size=NONCE_BYTES)
        if abs(sent_ms - wall_ms) > self._skew_s * 1000:
            raise StaleError("hello timestamp outside the accepted window")
        if nonce in self._seen:
            raise StaleError("replayed hello")
        is_reply = msg.type == MsgType.HELLO_REPLY
        reply_to = f.bytes("re", size=NONCE_BYTES, optional=True)
        if is_reply and (reply_to is None or reply_to not in self._sent):
            raise StaleError("hello reply to nothing we sent")
        verify(msg.sender, Domain.HELLO, signed)
        record = f.list("rec", max_len=3)
        if parse_record(record).origin != msg.sender:
            raise WrongOriginError("hello carries another node's record")
        self._seen[nonce] = now
        if len(self._seen) > MAX_NONCES:
            self._seen.pop(next(iter(self._seen)))
        return Hello(msg.sender, record, nonce, is_reply)

    def answered(self) -> None:
        """A seed answered: replies to our older hellos are stale now."""
        self._sent.clear()

    def rate_limit(self, source: str, now: float) -> None:
        """A token bucket per source address for what strangers send; raises when empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_NONCES:
                self._buckets.clear()
            bucket = self._buckets[source] = _TokenBucket(HELLO_BURST, now)
        bucket.tokens = min(HELLO_BURST, bucket.tokens + (now - bucket.stamp) * HELLO_RATE_PER_S)
        bucket.stamp = now
        if bucket.tokens < 1:
            raise RateLimitedError(f"too many hellos from {source}")
        bucket.tokens -= 1

    def collect(self, now: float) -> None:
        """Forget nonces too old to pass the freshness window anyway."""
        horizon = now - 2 * self._skew_s
        self._seen = {n: t for n, t in self._seen.items() if t > horizon}
