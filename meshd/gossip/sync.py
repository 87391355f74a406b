"""Push-pull anti-entropy over a stream, Scuttlebutt style (sans-IO).

    initiator                          responder
    SYNC_HASH {h, c}        ─────►
                            ◄─────     SYNC_HASH {h, eq: true, c}    (equal: done)
                            ◄─────     SYNC_DIGEST {d, c}            (differ)
    SYNC_DELTA {r, d}       ─────►
                            ◄─────     SYNC_DELTA {r}

Two tables that agree exchange two small frames whatever their size. `c`
carries claims the sender holds against the receiver (it thinks the receiver
is dead or suspect), so two halves of a healed partition learn they must
refute, which is how they become alive to each other again.

The session only turns frames into frames; the owner (the gossip engine)
merges what arrives and supplies claims, so its events and broadcasts fire.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol

from meshd import wire
from meshd.errors import WireError
from meshd.gossip.auth import MAC_BYTES
from meshd.table import Digest, Record
from meshd.wire import Fields, MsgType

MAX_CLAIMS_PER_FRAME = 16


class SyncOwner(Protocol):
    """What a session needs from the engine that owns the table."""

    node_id: bytes

    def table_hash(self) -> bytes: ...
    def digest_wire(self) -> dict[str, Any]: ...
    def delta_since(self, digest: Digest) -> list[Record]: ...
    def merge_synced(self, records: list[Any], peer: bytes, now: float, wall_ms: int) -> None: ...
    def claims_against(self, peer: bytes) -> list[Any]: ...
    def receive_claims(self, claims: list[Any], peer: bytes, now: float, wall_ms: int) -> None: ...


class Phase(enum.Enum):
    WANT_HASH = "want_hash"          # responder, before the first frame
    WANT_REPLY = "want_reply"        # initiator, after sending its hash
    WANT_DELTA = "want_delta"        # responder, after sending its digest
    WANT_LAST = "want_last"          # initiator, after sending its delta
    DONE = "done"


class SyncSession:
    """One push-pull exchange; `receive(frame)` returns the frames to write back."""

    def __init__(self, owner: SyncOwner, seal: Callable[[bytes, bytes], bytes],
                 open_: Callable[[bytes, bytes], bytes], peer: bytes | None) -> None:
        self._owner = owner
        self._seal = seal
        self._open = open_
        self.peer = peer
        self.phase = Phase.WANT_HASH
        self.records_in = 0
        self.records_out = 0
        #: The clock of the frame being handled: what it merges is stamped with it.
        self._now, self._wall_ms = 0.0, 0

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @classmethod
    def initiate(cls, owner: SyncOwner, seal: Callable[[bytes, bytes], bytes],
                 open_: Callable[[bytes, bytes], bytes], peer: bytes) -> tuple[SyncSession, bytes]:
        session = cls(owner, seal, open_, peer)
        session.phase = Phase.WANT_REPLY
        return session, session._frame(MsgType.SYNC_HASH, {"h": owner.table_hash(),
                                                          "c": owner.claims_against(peer)})

    def _frame(self, msg_type: MsgType, body: dict[str, Any]) -> bytes:
        assert self.peer is not None
        return self._seal(self.peer, wire.encode_message(msg_type, self._owner.node_id, body))

    def receive(self, frame: bytes, now: float, wall_ms: int) -> list[bytes]:
        """Handle one frame from the peer, arrived at `now` (monotonic s) and `wall_ms`;
        raises `MeshdError` subclasses on bad input."""
        self._now, self._wall_ms = now, wall_ms
        msg = self._decode(frame)
        if self.peer is None:
            self.peer = msg.sender
        elif msg.sender != self.peer:
            raise WireError("sync: frame from a different sender mid-session")
        f = Fields(msg.body, "sync")
        handler = _HANDLERS.get((self.phase, msg.type))
        if handler is None:
            raise WireError(f"sync: {msg.type.name} unexpected in phase {self.phase.value}")
        return handler(self, f)

    def peek_records(self, frame: bytes) -> list[Any]:
        """The records a delta frame carries, MAC-checked but not merged, so the caller can
        verify them (`Table.warm`) before `receive`, which it may run under a lock."""
        if self.phase not in (Phase.WANT_DELTA, Phase.WANT_LAST):
            return []
        msg = self._decode(frame)
        records = msg.body.get("r") if isinstance(msg.body, dict) else None
        return records if msg.type is MsgType.SYNC_DELTA and isinstance(records, list) else []

    def _decode(self, frame: bytes) -> wire.Message:
        # The sender is inside the MAC'd bytes; peek it to pick the key, then verify.
        head = wire.decode_message(frame[:-MAC_BYTES], wire.MAX_STREAM_FRAME_BYTES)
        self._open(head.sender, frame)
        return head

    def _claims(self, f: Fields) -> None:
        claims = f.list("c", max_len=MAX_CLAIMS_PER_FRAME, optional=True) or []
        assert self.peer is not None
        self._owner.receive_claims(claims, self.peer, self._now, self._wall_ms)

    def _on_hash(self, f: Fields) -> list[bytes]:
        self._claims(f)
        assert self.peer is not None
        theirs = f.bytes("h", size=32)
        back = self._owner.claims_against(self.peer)
        if theirs == self._owner.table_hash():
            self.phase = Phase.DONE
            return [self._frame(MsgType.SYNC_HASH, {"h": theirs, "eq": True, "c": back})]
        self.phase = Phase.WANT_DELTA
        return [self._frame(MsgType.SYNC_DIGEST, {"d": self._owner.digest_wire(), "c": back})]

    def _on_equal(self, f: Fields) -> list[bytes]:
        self._claims(f)
        self.phase = Phase.DONE
        return []

    def _on_digest(self, f: Fields) -> list[bytes]:
        self._claims(f)
        theirs = Digest.from_wire(f.map("d"))
        delta = self._owner.delta_since(theirs)
        self.records_out += len(delta)
        self.phase = Phase.WANT_LAST
        return [self._frame(MsgType.SYNC_DELTA, {"r": [r.to_wire() for r in delta],
                                                  "d": self._owner.digest_wire()})]

    def _on_delta(self, f: Fields) -> list[bytes]:
        records = f.list("r", max_len=wire.MAX_RECORDS_PER_MESSAGE)
        theirs = Digest.from_wire(f.map("d"))
        self._merge(records)
        delta = self._owner.delta_since(theirs)
        self.records_out += len(delta)
        self.phase = Phase.DONE
        return [self._frame(MsgType.SYNC_DELTA, {"r": [r.to_wire() for r in delta]})]

    def _on_last(self, f: Fields) -> list[bytes]:
        self._merge(f.list("r", max_len=wire.MAX_RECORDS_PER_MESSAGE))
        self.phase = Phase.DONE
        return []

    def _merge(self, records: list[Any]) -> None:
        assert self.peer is not None
        self.records_in += len(records)
        self._owner.merge_synced(records, self.peer, self._now, self._wall_ms)


_HANDLERS: dict[tuple[Phase, MsgType], Callable[[SyncSession, Fields], list[bytes]]] = {
    (Phase.WANT_HASH, MsgType.SYNC_HASH): SyncSession._on_hash,
    (Phase.WANT_REPLY, MsgType.SYNC_HASH): SyncSession._on_equal,
    (Phase.WANT_REPLY, MsgType.SYNC_DIGEST): SyncSession._on_digest,
    (Phase.WANT_DELTA, MsgType.SYNC_DELTA): SyncSession._on_delta,
    (Phase.WANT_LAST, MsgType.SYNC_DELTA): SyncSession._on_last,
}
