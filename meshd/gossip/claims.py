"""Claims: a member's signed word that another seemed unreachable, or dead (sans-IO).

Nobody can declare another node alive; anyone can accuse. So an accusation
is a signed claim that counts once per claimant, about one incarnation (the
subject's node record version) only, and a suspicion is the set of claims
one node holds against a member while Lifeguard's timeout runs
(docs/protocol.md, "Claims, suspicion and death"). How many confirmations
shorten it, and what a suspicion's end does, is the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from meshd import wire
from meshd.errors import WireError
from meshd.identity import sign
from meshd.wire import Domain, Fields, Signed

CLAIM_SUSPECT = "suspect"
CLAIM_DEAD = "dead"
CLAIM_TTL_MS = 60_000


@dataclass(frozen=True, slots=True)
class Claim:
    """A member's signed statement that another seemed unreachable (or dead) at an incarnation."""

    claimant: bytes
    subject: bytes
    incarnation: int
    kind: str
    wall_ms: int
    signed: Signed = field(repr=False)

    @classmethod
    def make(cls, key: nacl.signing.SigningKey, subject: bytes, incarnation: int, kind: str,
             wall_ms: int) -> Claim:
        claimant = bytes(key.verify_key)
        body = {"by": claimant, "sub": subject, "inc": incarnation, "k": kind, "t": wall_ms}
        return cls(claimant, subject, incarnation, kind, wall_ms,
                   sign(key, Domain.CLAIM, wire.pack(body)))

    @classmethod
    def parse(cls, obj: Any) -> Claim:
        signed = Signed.from_wire(obj, "claim")
        f = Fields(wire.unpack(signed.payload, wire.MAX_BIN_BYTES), "claim")
        kind = f.str("k", max_len=16)
        if kind not in (CLAIM_SUSPECT, CLAIM_DEAD):
            raise WireError(f"claim: unknown kind {kind!r}")
        return cls(f.bytes("by", size=32), f.bytes("sub", size=32), f.int("inc"), kind,
                   f.int("t"), signed)

    def to_wire(self) -> list[bytes]:
        return self.signed.to_wire()


@dataclass(slots=True)
class Suspicion:
    """One node's running case against a member: who claimed, since when, until when."""

    incarnation: int
    started: float
    claimants: set[bytes]
    deadline: float
    claims: dict[bytes, Claim]
