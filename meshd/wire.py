"""The msgpack wire codec: one envelope for every message, hard limits on input.

Everything that arrives from the network passes through `unpack`, which checks
the byte length before decoding, bounds every string, binary, list and map
while decoding, and bounds nesting depth and value types afterwards. Anything
wrong becomes a `WireError` subclass, never a msgpack or Python exception, so
a peer can cost a receiver a counter increment but never a task.

Signed objects are carried as `Signed(payload, signature)`: the payload is the
exact msgpack bytes the signer produced, kept as an opaque `bin` so that relays
forward it byte for byte and nobody re-encodes someone else's words.
"""

from __future__ import annotations

import builtins
import enum
from dataclasses import dataclass
from typing import Any, Iterable

import msgpack

from meshd.errors import TooLargeError, UnsupportedVersionError, WireError

PROTOCOL_VERSION = 1

# WireGuard's 1420-byte MTU minus IPv6 (40) and UDP (8) headers.
MAX_DATAGRAM_BYTES = 1372
# One push-pull stream frame; a full table of a 10,000-node cluster fits.
MAX_STREAM_FRAME_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 8
MAX_STR_BYTES = 1024
MAX_BIN_BYTES = 64 * 1024
MAX_ARRAY_LEN = 100_000
MAX_MAP_LEN = 256
MAX_RECORDS_PER_MESSAGE = 50_000

NODE_ID_BYTES = 32
SIGNATURE_BYTES = 64
INT64_MAX = 2**63 - 1

_SCALARS = (type(None), bool, int, float, str, bytes)


class Domain(bytes, enum.Enum):
    """Signature domain tags: a signature made for one never verifies for another."""

    RECORD = b"meshd/v1/record"
    CLAIM = b"meshd/v1/claim"
    HELLO = b"meshd/v1/hello"
    REVOCATION = b"meshd/v1/revocation"
    CLUSTER = b"meshd/v1/cluster"
    CERT = b"meshd/v1/cert"


def signing_input(domain: Domain, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers: the tag, a NUL, the payload."""
    return domain.value + b"\x00" + payload


class MsgType(enum.IntEnum):
    """Envelope message types (docs/protocol.md describes each body)."""

    HELLO = 1
    HELLO_REPLY = 2
    PING = 3
    ACK = 4
    NACK = 5
    PING_REQ = 6
    GOSSIP = 7
    SYNC_HASH = 8
    SYNC_DIGEST = 9
    SYNC_DELTA = 10


#: Every datagram's type is looked up here: `MsgType(n)` runs two Python-level enum calls.
_MSG_TYPES: dict[int, MsgType] = {int(kind): kind for kind in MsgType}


def pack(obj: Any) -> bytes:
    """Encode a value the way every meshd signer does (bin for bytes, str for text)."""
    return msgpack.packb(obj, use_bin_type=True)


_LIMITS = dict(
    raw=False,
    strict_map_key=True,
    use_list=True,
    max_str_len=MAX_STR_BYTES,
    max_bin_len=MAX_BIN_BYTES,
    max_array_len=MAX_ARRAY_LEN,
    max_map_len=MAX_MAP_LEN,
    max_ext_len=0,
)


def unpack(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES) -> Any:
    """Decode untrusted bytes (exactly one value) within the limits, or raise a `WireError`.

    `unpackb` makes no `Unpacker` object, which cost about as much as decoding a node
    record's payload itself.
    """
    _check_input(data, max_bytes)
    try:
        obj = msgpack.unpackb(data, **_LIMITS)
    except msgpack.ExtraData as exc:
        raise WireError(f"{len(exc.extra)} trailing bytes after the message") from None
    except Exception as exc:
        raise _decode_error(exc) from None
    _check_shape(obj, MAX_DEPTH)
    return obj


def unpack_prefix(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES) -> tuple[Any, int]:
    """Decode the first value of untrusted bytes; return it and how many bytes it used.

    Datagrams may carry a trailer (a MAC) after the envelope; this finds where it starts.
    """
    _check_input(data, max_bytes)
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1), **_LIMITS)
    try:
        unpacker.feed(data)
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise WireError("truncated msgpack") from None
    except Exception as exc:
        raise _decode_error(exc) from None
    _check_shape(obj, MAX_DEPTH)
    return obj, unpacker.tell()


def _check_input(data: bytes, max_bytes: int) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise TooLargeError(f"{len(data)} bytes exceeds the {max_bytes}-byte limit")


def _decode_error(exc: Exception) -> WireError:
    """What msgpack raised, as ours: it reports exceeded limits as a ValueError with
    "exceeds" in the text, and a zoo of types on hostile input."""
    if isinstance(exc, ValueError) and "exceeds" in str(exc):
        return TooLargeError(f"msgpack limit: {exc}")
    if isinstance(exc, ValueError):
        return WireError(f"malformed msgpack: {exc}")
    return WireError(f"malformed msgpack: {type(exc).__name__}")


def _check_shape(obj: Any, depth: int) -> None:
    """Reject nesting deeper than the limit and any non-plain value type."""
    if isinstance(obj, _SCALARS):
        return
    if depth <= 0:
        raise TooLargeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(obj, list):
        values: Iterable[Any] = obj
    elif isinstance(obj, dict):
        values = obj.values()
    else:
        raise WireError(f"unsupported value type {type(obj).__name__}")
    for value in values:
        # Scalars checked here, not by a call each: a probe is a list and a map of them.
        if not isinstance(value, _SCALARS):
            _check_shape(value, depth - 1)


class Fields:
    """Typed, bounded access to a decoded map; every miss is a `WireError`.

    Bodies are maps with short string keys. Reading them through this class
    keeps "the peer sent garbage" a single, uniform error path.
    """

    __slots__ = ("_map", "_what")

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, dict):
            raise WireError(f"{what}: expected a map, got {type(obj).__name__}")
        self._map = obj
        self._what = what

    def _get(self, key: str, kind: type | tuple[type, ...], optional: bool) -> Any:
        if key not in self._map:
            if optional:
                return None
            raise WireError(f"{self._what}: missing field {key!r}")
        value = self._map[key]
        if optional and value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise WireError(f"{self._what}.{key}: wrong type {type(value).__name__}")
        return value

    def bytes(self, key: str, *, size: int | None = None, max_len: int = MAX_BIN_BYTES,
              optional: bool = False) -> Any:
        value = self._get(key, bytes, optional)
        if value is None:
            return None
        if size is not None and len(value) != size:
            raise WireError(f"{self._what}.{key}: expected {size} bytes, got {len(value)}")
        if len(value) > max_len:
            raise TooLargeError(f"{self._what}.{key}: {len(value)} bytes exceeds {max_len}")
        return value

    def int(self, key: str, *, lo: int = 0, hi: int = INT64_MAX, optional: bool = False) -> Any:
        value = self._get(key, int, optional)
        if value is None:
            return None
        if not lo <= value <= hi:
            raise WireError(f"{self._what}.{key}: {value} outside [{lo}, {hi}]")
        return value

    # From here on `int`, `str` and `bool` in this class name the methods above: annotations
    # say `builtins.` for the types.
    def str(self, key: builtins.str, *, max_len: builtins.int = 255, optional: bool = False) -> Any:
        value = self._get(key, str, optional)
        if value is None:
            return None
        if len(value) > max_len:
            raise TooLargeError(f"{self._what}.{key}: {len(value)} characters exceeds {max_len}")
        return value

    def bool(self, key: builtins.str, *, optional: builtins.bool = False) -> Any:
        return self._get(key, bool, optional)

    def list(self, key: builtins.str, *, max_len: builtins.int = MAX_MAP_LEN,
             optional: builtins.bool = False) -> Any:
        value = self._get(key, list, optional)
        if value is not None and len(value) > max_len:
            raise TooLargeError(f"{self._what}.{key}: {len(value)} items exceeds {max_len}")
        return value

    def map(self, key: builtins.str, *, optional: builtins.bool = False) -> Any:
        return self._get(key, dict, optional)


@dataclass(frozen=True, slots=True)
class Signed:
    """An origin's exact payload bytes and its Ed25519 signature over them."""

    payload: bytes
    signature: bytes

    def to_wire(self) -> list[bytes]:
        return [self.payload, self.signature]

    @classmethod
    def from_wire(cls, obj: Any, what: str = "signed") -> Signed:
        if not (isinstance(obj, list) and len(obj) == 2):
            raise WireError(f"{what}: expected [payload, signature]")
        payload, signature = obj
        if not isinstance(payload, bytes) or not isinstance(signature, bytes):
            raise WireError(f"{what}: payload and signature must be bin")
        if len(signature) != SIGNATURE_BYTES:
            raise WireError(f"{what}: signature is {len(signature)} bytes, expected 64")
        return cls(payload, signature)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded envelope: who sent what kind of message, with its body."""

    type: MsgType
    sender: bytes
    body: Any


def encode_message(msg_type: MsgType, sender: bytes, body: Any) -> bytes:
    """Frame a body in the versioned envelope."""
    return pack([PROTOCOL_VERSION, int(msg_type), sender, body])


def decode_message(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES) -> Message:
    """Unframe untrusted bytes; the body is still unvalidated plain data."""
    return _envelope(unpack(data, max_bytes))


def encode_datagram(msg_type: MsgType, body: Any) -> bytes:
    """A compact envelope without the sender, for datagrams whose MAC key the
    receiver picks by source address: 34 bytes less on every probe."""
    return pack([PROTOCOL_VERSION, int(msg_type), body])


@dataclass(frozen=True, slots=True)
class Datagram:
    """A decoded compact envelope: the sender is known from where it came."""

    type: MsgType
    body: Any


def decode_datagram_prefix(data: bytes, max_bytes: int = MAX_DATAGRAM_BYTES
                           ) -> tuple[Message | Datagram, int]:
    """Unframe a datagram: a full envelope (hellos) or a compact one followed by a trailer.

    Returns the envelope and its length, so the caller can find the trailer (a MAC).
    """
    obj, used = unpack_prefix(data, max_bytes)
    if isinstance(obj, list) and len(obj) == 3:
        version, msg_type, body = obj
        return Datagram(_header(version, msg_type), body), used
    return _envelope(obj), used


def _envelope(obj: Any) -> Message:
    if not (isinstance(obj, list) and len(obj) == 4):
        raise WireError("envelope: expected [version, type, sender, body]")
    version, msg_type, sender, body = obj
    kind = _header(version, msg_type)
    if not isinstance(sender, bytes) or len(sender) != NODE_ID_BYTES:
        raise WireError("envelope: sender must be a 32-byte node ID")
    return Message(kind, sender, body)


def _header(version: Any, msg_type: Any) -> MsgType:
    if not isinstance(version, int) or isinstance(version, bool):
        raise WireError("envelope: version must be an integer")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(f"protocol version {version}, this build speaks {PROTOCOL_VERSION}")
    kind = _MSG_TYPES.get(msg_type) if type(msg_type) is int else None  # not a bool, not a float
    if kind is None:
        raise WireError(f"envelope: unknown message type {msg_type!r}")
    return kind
