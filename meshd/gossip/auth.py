"""Datagram authentication for membership-only mode (sans-IO).

Probes are too frequent to Ed25519-sign. Without a WireGuard tunnel to vouch
for the sender, each datagram instead ends in a 16-byte BLAKE2b MAC keyed by
an X25519 secret both nodes derive from their static identity keys, plus a
sequence number checked against a sliding replay window (as WireGuard does).
A sender keeps one sequence counter per peer, starting above its boot
version, which rises across restarts, so a restarted node is not mistaken for
a replayer.
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings
import nacl.exceptions
import nacl.signing

from meshd.errors import BadSignatureError, StaleError, WireError

MAC_BYTES = 16
SEQ_SHIFT = 20          # counter bits below the boot version
WINDOW_BITS = 128
_MASK = (1 << WINDOW_BITS) - 1
MAX_PEERS = 65_536


class ReplayWindow:
    """Accepts each sequence number once, tolerating reordering within the window."""

    __slots__ = ("top", "bits")

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def check_and_set(self, seq: int) -> bool:
        if seq > self.top:
            shift = seq - self.top
            # A jump past the window (a restart, the first datagram) starts a fresh one;
            # shifting by it would build an integer as large as the jump.
            self.bits = 1 if shift >= WINDOW_BITS else ((self.bits << shift) | 1) & _MASK
            self.top = seq
            return True
        offset = self.top - seq
        if offset >= WINDOW_BITS or self.bits >> offset & 1:
            return False
        self.bits |= 1 << offset
        return True


class PairwiseAuth:
    """MAC keys per peer, derived once, plus each peer's replay window."""

    def __init__(self, key: nacl.signing.SigningKey, boot_version: int) -> None:
        self._me = bytes(key.verify_key)
        self._secret = bytes(key.to_curve25519_private_key())
        self._keys: dict[bytes, bytes] = {}
        self._windows: dict[bytes, ReplayWindow] = {}
        self._first_seq = boot_version << SEQ_SHIFT
        # One counter per peer, as WireGuard keeps one per session: with a shared counter
        # a burst to many peers spreads one peer's numbers wider than its replay window,
        # and two datagrams reordered in flight would look like a replay.
        self._seqs: dict[bytes, int] = {}

    def next_seq(self, peer: bytes) -> int:
        seq = self._seqs.get(peer, self._first_seq) + 1
        if len(self._seqs) >= MAX_PEERS and peer not in self._seqs:
            self._first_seq = max(self._seqs.values())   # forget peers, never reuse a number
            self._seqs.clear()
            seq = self._first_seq + 1
        self._seqs[peer] = seq
        return seq

    def _key(self, peer: bytes) -> bytes:
        key = self._keys.get(peer)
        if key is None:
            try:
                their = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(peer)
                shared = nacl.bindings.crypto_scalarmult(self._secret, their)
            except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
                    nacl.exceptions.TypeError):
                raise BadSignatureError("peer ID is not a usable public key") from None
            pair = b"".join(sorted((self._me, peer)))
            key = hashlib.blake2b(shared + pair, digest_size=32, person=b"meshd/v1/mac").digest()
            if len(self._keys) >= MAX_PEERS:
                self._keys.clear()
            self._keys[peer] = key
        return key

    def seal(self, peer: bytes, data: bytes) -> bytes:
        """Append the MAC for `peer` to an encoded envelope."""
        return data + hashlib.blake2b(data, key=self._key(peer), digest_size=MAC_BYTES).digest()

    def open(self, sender: bytes, datagram: bytes) -> bytes:
        """Check and strip the MAC; raise if it is wrong."""
        if len(datagram) <= MAC_BYTES:
            raise WireError("datagram too short for a MAC")
        data, mac = datagram[:-MAC_BYTES], datagram[-MAC_BYTES:]
        expected = hashlib.blake2b(data, key=self._key(sender), digest_size=MAC_BYTES).digest()
        if not hmac.compare_digest(mac, expected):
            raise BadSignatureError("datagram MAC does not match its sender")
        return data

    def accept_seq(self, sender: bytes, seq: int) -> None:
        """Reject a replayed sequence number (call only after the MAC checked out)."""
        window = self._windows.get(sender)
        if window is None:
            if len(self._windows) >= MAX_PEERS:
                self._windows.clear()
            window = self._windows[sender] = ReplayWindow()
        if not window.check_and_set(seq):
            raise StaleError("replayed datagram")
