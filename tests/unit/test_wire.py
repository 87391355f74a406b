"""The msgpack envelope and its limits: what decodes, and how everything else fails."""

from __future__ import annotations

import msgpack
import pytest

from meshd import wire
from meshd.errors import TooLargeError, UnsupportedVersionError, WireError
from meshd.wire import Domain, Fields, MsgType, Signed

SENDER = bytes(range(32))


def nested(depth: int) -> object:
    """`depth` lists inside each other around a scalar."""
    obj: object = 0
    for _ in range(depth):
        obj = [obj]
    return obj


def test_message_round_trips_every_type() -> None:
    body = {"r": [[0, b"payload", bytes(64)]], "n": 7, "s": "text", "f": 1.5, "t": True, "x": None}
    for msg_type in MsgType:
        msg = wire.decode_message(wire.encode_message(msg_type, SENDER, body))
        assert (msg.type, msg.sender, msg.body) == (msg_type, SENDER, body)


def test_bytes_stay_bin_and_text_stays_str() -> None:
    data = wire.pack({"b": b"\xff\x00", "s": "\u00e9"})
    assert b"\xc4\x02\xff\x00" in data  # bin 8, not str
    assert wire.unpack(data) == {"b": b"\xff\x00", "s": "\u00e9"}


def test_datagram_limit_is_inclusive() -> None:
    assert wire.MAX_DATAGRAM_BYTES == 1372
    exact = wire.pack(b"x" * (wire.MAX_DATAGRAM_BYTES - 3))  # bin16 header is 3 bytes
    assert len(exact) == wire.MAX_DATAGRAM_BYTES
    assert wire.unpack(exact) == b"x" * (wire.MAX_DATAGRAM_BYTES - 3)
    with pytest.raises(TooLargeError):
        wire.unpack(exact + b"\x00")


def test_oversize_datagram_is_too_large_before_decoding() -> None:
    big = wire.encode_message(MsgType.GOSSIP, SENDER, [b"x" * 1000, b"y" * 1000])
    with pytest.raises(TooLargeError):
        wire.decode_message(big)
    # The same bytes are fine as a stream frame.
    assert wire.decode_message(big, wire.MAX_STREAM_FRAME_BYTES).body[0] == b"x" * 1000
    with pytest.raises(TooLargeError):
        wire.unpack(b"\xc0" * (wire.MAX_STREAM_FRAME_BYTES + 1), wire.MAX_STREAM_FRAME_BYTES)


def test_unsupported_version_is_its_own_error() -> None:
    data = wire.pack([wire.PROTOCOL_VERSION + 1, int(MsgType.PING), SENDER, {}])
    with pytest.raises(UnsupportedVersionError):
        wire.decode_message(data)
    assert UnsupportedVersionError.reason == "unsupported_version"


@pytest.mark.parametrize("envelope", [
    [1, 3, SENDER],                      # too short
    [1, 3, SENDER, {}, 0],               # too long
    {"v": 1},                            # not a list
    [True, 3, SENDER, {}],               # bool is not a version
    ["1", 3, SENDER, {}],
    [1, 99, SENDER, {}],                 # unknown type
    [1, True, SENDER, {}],               # bool is not a type
    [1, 3.0, SENDER, {}],
    [1, 3, SENDER[:31], {}],             # short sender
    [1, 3, "sender", {}],
])
def test_malformed_envelopes_are_wire_errors(envelope: object) -> None:
    with pytest.raises(WireError):
        wire.decode_message(wire.pack(envelope))


def test_decode_rejects_depth_over_limit() -> None:
    assert wire.unpack(wire.pack(nested(wire.MAX_DEPTH))) == nested(wire.MAX_DEPTH)
    with pytest.raises(TooLargeError):
        wire.unpack(wire.pack(nested(wire.MAX_DEPTH + 1)))
    deep_map: object = 0
    for _ in range(wire.MAX_DEPTH + 1):
        deep_map = {"k": deep_map}
    with pytest.raises(TooLargeError):
        wire.unpack(wire.pack(deep_map))
    # Far deeper than msgpack's own stack: still only a WireError.
    with pytest.raises(WireError):
        wire.unpack(b"\x91" * 100_000 + b"\xc0", wire.MAX_STREAM_FRAME_BYTES)


@pytest.mark.parametrize("data", [
    b"\xdd\xff\xff\xff\xff",                              # array32 claiming 4G items
    b"\xdf\xff\xff\xff\xff",                              # map32 claiming 4G pairs
    b"\xc6\x00\x01\x00\x01" + b"\x00" * 65537,            # bin over MAX_BIN_BYTES
    b"\xda\x04\x01" + b"a" * 1025,                        # str over MAX_STR_BYTES
    wire.pack(list(range(wire.MAX_ARRAY_LEN + 1))),
    wire.pack({str(i): i for i in range(wire.MAX_MAP_LEN + 1)}),
])
def test_declared_lengths_over_limits_are_too_large(data: bytes) -> None:
    with pytest.raises(TooLargeError):
        wire.unpack(data, wire.MAX_STREAM_FRAME_BYTES)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",                          # never-used byte
    b"\x93\x01\x02",                  # truncated array
    b"\xc6\xff\xff\xff\xff",          # bin32 header with no body
    b"\x01\x02",                      # trailing bytes
    b"\x81\x01\x02",                  # int map key
    b"\x81\xc0\x02",                  # nil map key
    b"\xc7\x00\x05",                  # zero-length ext
    b"\xd6\xff\x00\x00\x00\x00",      # timestamp ext
    b"\xa2\xff\xfe",                  # str that is not UTF-8
])
def test_malformed_bytes_are_wire_errors(data: bytes) -> None:
    with pytest.raises(WireError):
        wire.unpack(data)


def test_unpack_counts_trailing_bytes() -> None:
    with pytest.raises(WireError, match="3 trailing bytes"):
        wire.unpack(wire.pack([1, "a"]) + b"xyz")


def test_unpack_refuses_non_bytes() -> None:
    with pytest.raises(WireError):
        wire.unpack("text")  # type: ignore[arg-type]


def test_prefix_decoding_reports_where_a_trailer_starts() -> None:
    envelope = wire.encode_message(MsgType.HELLO, SENDER, {"seq": 1})
    msg, used = wire.decode_datagram_prefix(envelope + b"T" * 16)
    assert used == len(envelope) and msg.body == {"seq": 1}
    assert isinstance(msg, wire.Message) and msg.sender == SENDER
    with pytest.raises(WireError):
        wire.decode_message(envelope + b"T" * 16)


def test_compact_datagrams_carry_no_sender_and_save_its_bytes() -> None:
    compact = wire.encode_datagram(MsgType.PING, {"s": 1, "n": 2})
    full = wire.encode_message(MsgType.PING, SENDER, {"s": 1, "n": 2})
    msg, used = wire.decode_datagram_prefix(compact + b"M" * 16)
    assert msg == wire.Datagram(MsgType.PING, {"s": 1, "n": 2}) and used == len(compact)
    assert len(full) - len(compact) == 34


@pytest.mark.parametrize("obj", [[2, 3, {}], [1, 99, {}], [True, 3, {}], [1, 3.0, {}]])
def test_bad_compact_headers_are_wire_errors(obj: list[object]) -> None:
    with pytest.raises(WireError):
        wire.decode_datagram_prefix(wire.pack(obj))


def test_signing_input_separates_domains() -> None:
    assert wire.signing_input(Domain.RECORD, b"abc") == b"meshd/v1/record\x00abc"
    inputs = {wire.signing_input(d, b"abc") for d in Domain}
    assert len(inputs) == len(Domain)
    # No tag is a prefix of another plus the NUL, so no payload can shift domains.
    for a in Domain:
        for b in Domain:
            if a is not b:
                assert not (b.value + b"\x00").startswith(a.value + b"\x00")


def test_signed_from_wire_checks_shape() -> None:
    good = Signed(b"payload", bytes(64))
    assert Signed.from_wire(good.to_wire()) == good
    for bad in ([b"p"], [b"p", bytes(64), b"x"], [b"p", bytes(63)], ["p", bytes(64)],
                [b"p", "s" * 64], (b"p", bytes(64)), None):
        with pytest.raises(WireError):
            Signed.from_wire(bad)


def test_fields_types_and_bounds() -> None:
    f = Fields({"b": b"ab", "i": 5, "t": True, "s": "hey", "l": [1, 2], "m": {}, "n": None}, "x")
    assert f.bytes("b", size=2) == b"ab" and f.int("i", hi=5) == 5 and f.bool("t") is True
    assert f.str("s") == "hey" and f.list("l") == [1, 2] and f.map("m") == {}
    assert f.int("n", optional=True) is None and f.str("absent", optional=True) is None
    with pytest.raises(WireError):
        f.int("t")                       # a bool is not an int
    with pytest.raises(WireError):
        f.int("i", hi=4)
    with pytest.raises(WireError):
        f.bytes("b", size=3)
    with pytest.raises(TooLargeError):
        f.str("s", max_len=2)
    with pytest.raises(TooLargeError):
        f.list("l", max_len=1)
    with pytest.raises(WireError, match="missing"):
        f.bytes("absent")
    with pytest.raises(WireError):
        f.str("n")                       # None where a value is required
    with pytest.raises(WireError):
        Fields([1, 2], "x")


def test_pack_matches_msgpack_with_bin_type() -> None:
    obj = [1, "a", b"b", {"k": [None, True]}]
    assert wire.pack(obj) == msgpack.packb(obj, use_bin_type=True)
