"""The mesh table: signed single-writer records merged as an LWW map (sans-IO).

A record is `(origin, kind, key) -> (version, body, signature)`. Only the
origin can sign its keys, so per key the highest version wins; a tie (an
origin that equivocated) goes to the larger signature, which keeps merge
commutative, associative and idempotent whatever the delivery order.

The table hash is a sum of per-record hashes, updated in O(1) per change, so
two tables that agree find out by comparing 32 bytes. The digest carries the
same sum per origin (truncated) next to the origin's highest version, and
`delta_since` sends every record of each origin whose sum differs. A highest
version alone cannot summarise an origin: records arrive out of order (a
pushed update can overtake an older one that was lost), so a table may hold
an origin's newest version and still lack an older key.

Verification is paid once per record version: a record whose version we
already hold is dropped after a msgpack decode of its header, before any
signature check, and verified records are cached by signature (`RecordCache`,
which the simulator shares between thousands of tables).
"""

from __future__ import annotations

import collections
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import nacl.signing

from meshd import wire
from meshd.errors import (
    LimitError,
    RemoteError,
    StaleError,
    TooLargeError,
    UnknownCAError,
    UsageError,
    VerificationError,
    WireError,
)
from meshd.identity import Certificate, Revocation, Trust, public_id, sign, verify
from meshd.records import KIND_NODE, KIND_REVOCATION, KIND_SERVICE, NODE_KEY, NodeInfo, ServiceInfo
from meshd.wire import Domain, Signed

RECORD_TAG = 0
REVOCATION_TAG = 1
DEFAULT_MAX_RECORDS_PER_ORIGIN = 1024
DEFAULT_TOMBSTONE_GRACE_MS = 60 * 60 * 1000
REAPED_MEMORY_MS = 24 * 60 * 60 * 1000
MAX_KEY_CHARS = 255
HASH_MODULUS = 1 << 256
ORIGIN_HASH_BYTES = 8
ORIGIN_HASH_MODULUS = 1 << 8 * ORIGIN_HASH_BYTES
# A digest entry on the wire: node ID, highest version, origin hash, packed. A list of
# entries costs the decoder (and its shape check) per item; one `bin` per chunk does not.
DIGEST_ENTRY = struct.Struct(f">{wire.NODE_ID_BYTES}sQ{ORIGIN_HASH_BYTES}s")
DIGEST_CHUNK_ENTRIES = wire.MAX_BIN_BYTES // DIGEST_ENTRY.size
NO_ORIGIN_HASH = bytes(ORIGIN_HASH_BYTES)
_BODY_TYPES: dict[str, type[NodeInfo] | type[ServiceInfo]] = {
    KIND_NODE: NodeInfo, KIND_SERVICE: ServiceInfo}

Ident = tuple[bytes, str, str]


class UnknownOriginError(VerificationError):
    """A record arrived from an origin whose node record (and certificate) we lack."""

    reason = "unknown_origin"


@dataclass(frozen=True, slots=True)
class Record:
    """One signed fact. `body is None` marks a tombstone (a deleted key)."""

    origin: bytes
    kind: str
    key: str
    version: int
    body: Any = field(repr=False)
    signed: Signed = field(repr=False)
    info: NodeInfo | ServiceInfo | Revocation | None = field(default=None, repr=False)
    tag: int = RECORD_TAG
    #: The table's key for this record, built once: every lookup of a merge reads it, and
    #: the simulator's tables, which share record objects, then share it as well.
    ident: Ident = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ident", (self.origin, self.kind, self.key))

    @property
    def deleted(self) -> bool:
        return self.body is None and self.tag == RECORD_TAG

    def to_wire(self) -> list[Any]:
        return [self.tag, self.signed.payload, self.signed.signature]

    def wire_size(self) -> int:
        """Bytes this record adds to a msgpack message (bin headers included)."""
        return len(self.signed.payload) + len(self.signed.signature) + 8

    def entry_hash(self) -> int:
        return int.from_bytes(hashlib.blake2b(self.signed.signature, digest_size=32).digest(), "big")

    def beats(self, other: Record) -> bool:
        """LWW order: higher version, then the larger signature as a deterministic tie-break."""
        return (self.version, self.signed.signature) > (other.version, other.signed.signature)


def parse_record(obj: Any) -> Record:
    """Decode a wire record's header and body; no signature or grant check yet."""
    if not (isinstance(obj, list) and len(obj) == 3 and type(obj[0]) is int):  # not a bool
        raise WireError("record: expected [tag, payload, signature]")
    tag = obj[0]
    signed = Signed.from_wire(obj[1:], "record")
    if tag == REVOCATION_TAG:
        rev = Revocation.parse(signed)
        return Record(rev.issuer, KIND_REVOCATION, rev.serial.hex(), 1, None, signed, rev,
                      REVOCATION_TAG)
    if tag != RECORD_TAG:
        raise WireError(f"record: unknown tag {tag}")
    fields = wire.unpack(signed.payload, wire.MAX_BIN_BYTES)
    if not (isinstance(fields, list) and len(fields) == 5):
        raise WireError("record: payload must be [origin, kind, key, version, body]")
    origin, kind, key, version, body = fields
    if not isinstance(origin, bytes) or len(origin) != wire.NODE_ID_BYTES:
        raise WireError("record: origin must be a 32-byte node ID")
    if not isinstance(kind, str) or kind not in _BODY_TYPES:  # a list is unhashable
        raise WireError(f"record: unknown kind {kind!r}")
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        raise WireError("record: key must be a short string")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= wire.INT64_MAX:
        raise WireError("record: version must be a positive integer")
    return Record(origin, kind, key, version, body, signed)


def _with_info(record: Record) -> Record:
    """Type the body once its signature has been checked."""
    if record.body is None or record.tag == REVOCATION_TAG:
        return record
    info = _BODY_TYPES[record.kind].from_body(record.body)
    if record.kind == KIND_NODE and record.key != NODE_KEY:
        raise WireError("record: a node record's key must be empty")
    if isinstance(info, ServiceInfo) and info.key != record.key:
        raise WireError("record: service key does not match its body")
    return Record(record.origin, record.kind, record.key, record.version, record.body,
                  record.signed, info)


class RecordCache:
    """Records whose signatures (and bodies) checked out, by signature.

    Context-free facts only: grants, revocations and validity windows are
    checked per table, because they depend on what that table knows and when.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._by_sig: dict[bytes, Record] = {}

    def get(self, obj: Any) -> Record | None:
        if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[2], bytes):
            found = self._by_sig.get(obj[2])
            if found is not None and found.signed.payload == obj[1] and found.tag == obj[0]:
                return found
        return None

    def add(self, record: Record) -> None:
        if len(self._by_sig) >= self.max_entries:
            self._by_sig.clear()
        self._by_sig[record.signed.signature] = record


@dataclass(frozen=True, slots=True)
class Change:
    """One key that a merge, publish or collection changed."""

    old: Record | None
    new: Record | None

    @property
    def record(self) -> Record:
        rec = self.new if self.new is not None else self.old
        assert rec is not None
        return rec


@dataclass(slots=True)
class MergeResult:
    """What a merge did: the change feed for the layers above, and why things were refused."""

    changes: list[Change] = field(default_factory=list)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0

    def extend(self, other: MergeResult) -> None:
        self.changes.extend(other.changes)
        self.rejected.update(other.rejected)
        self.duplicates += other.duplicates


@dataclass(frozen=True, slots=True)
class Digest:
    """A table summary for anti-entropy: hash, per-origin max versions and hashes, revocations."""

    table_hash: bytes
    versions: Mapping[bytes, int]
    revocations: frozenset[bytes]
    origin_hashes: Mapping[bytes, bytes] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        entries = [DIGEST_ENTRY.pack(o, v, self.origin_hashes.get(o, NO_ORIGIN_HASH))
                   for o, v in self.versions.items()]
        return {"h": self.table_hash,
                "v": [b"".join(entries[i:i + DIGEST_CHUNK_ENTRIES])
                      for i in range(0, len(entries), DIGEST_CHUNK_ENTRIES)],
                "r": sorted(self.revocations)}

    @classmethod
    def from_wire(cls, obj: Any) -> Digest:
        f = wire.Fields(obj, "digest")
        versions: dict[bytes, int] = {}
        hashes: dict[bytes, bytes] = {}
        chunks = f.list("v", max_len=wire.MAX_ARRAY_LEN // DIGEST_CHUNK_ENTRIES + 1)
        if not all(isinstance(c, bytes) and len(c) % DIGEST_ENTRY.size == 0 for c in chunks):
            raise WireError(f"digest: entries are packed {DIGEST_ENTRY.size}-byte "
                            "[origin, version, origin hash]")
        if sum(map(len, chunks)) // DIGEST_ENTRY.size > wire.MAX_ARRAY_LEN:
            raise TooLargeError("digest: too many origins")
        for chunk in chunks:
            for origin, version, origin_hash in DIGEST_ENTRY.iter_unpack(chunk):
                if version > wire.INT64_MAX:
                    raise WireError("digest: version out of range")
                versions[origin] = version
                hashes[origin] = origin_hash
        revs = f.list("r", max_len=wire.MAX_ARRAY_LEN)
        if not all(isinstance(s, bytes) and len(s) == 16 for s in revs):
            raise WireError("digest: revocations are 16-byte serials")
        return cls(f.bytes("h", size=32), versions, frozenset(revs), hashes)


class VersionClock:
    """An origin's version counter: `max(last + 1, wall_ms)`, never backwards.

    The shell persists `last` before publishing, so a restart continues above
    every version this origin ever issued even if the wall clock stepped back.
    """

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self, wall_ms: int) -> int:
        self.last = max(self.last + 1, wall_ms)
        return self.last


class _Origin:
    """What one table holds of one origin.

    One object per origin, not a dict per origin and five maps keyed by it: a table of N
    nodes holds N of these, and the simulator holds N tables, so this is most of its
    memory. The node record sits apart because every origin has exactly one and, in
    membership-only mode, nothing else.

    Only its `owner` table changes it: a fork of a table shares its parent's entries and
    copies one before its first change (see `Table.fork`).
    """

    __slots__ = ("node", "others", "max_version", "hash", "cert", "owner")

    def __init__(self, owner: object) -> None:
        self.node: Record | None = None
        self.others: dict[Ident, Record] | None = None
        self.max_version = 0
        #: The sum of the origin's record hashes, kept to the width digests carry.
        self.hash = 0
        self.cert: Certificate | None = None
        self.owner = owner

    def copy(self, owner: object) -> _Origin:
        twin = _Origin(owner)
        twin.node, twin.max_version, twin.hash, twin.cert = (
            self.node, self.max_version, self.hash, self.cert)
        twin.others = None if self.others is None else dict(self.others)
        return twin

    def records(self) -> list[Record]:
        held = [] if self.node is None else [self.node]
        if self.others:
            held.extend(self.others.values())
        return held

    def count(self) -> int:
        return (self.node is not None) + len(self.others or ())

    def put(self, record: Record) -> None:
        if record.kind == KIND_NODE:
            self.node = record
        elif self.others is None:
            self.others = {record.ident: record}
        else:
            self.others[record.ident] = record

    def discard(self, record: Record) -> None:
        if record.kind == KIND_NODE:
            self.node = None
        elif self.others is not None:
            self.others.pop(record.ident, None)

    def digest_hash(self) -> bytes:
        return self.hash.to_bytes(ORIGIN_HASH_BYTES, "big")


class Table:
    """One node's copy of the mesh table."""

    def __init__(self, trust: Trust, *, max_records_per_origin: int = DEFAULT_MAX_RECORDS_PER_ORIGIN,
                 tombstone_grace_ms: int = DEFAULT_TOMBSTONE_GRACE_MS,
                 cache: RecordCache | None = None) -> None:
        self.trust = trust
        self.max_records_per_origin = max_records_per_origin
        self.tombstone_grace_ms = tombstone_grace_ms
        self.cache = cache if cache is not None else RecordCache()
        self._records: dict[Ident, Record] = {}
        # Every origin with a record here, or whose records were all collected: its
        # highest version stays in digests until the origin itself is dropped.
        self._origins: dict[bytes, _Origin] = {}
        # Per origin: versions at or below this were reaped or collected; keep them out.
        self._floor: dict[bytes, tuple[int, int]] = {}
        self._hash = 0
        self._changes = 0    # counts every record added or removed (see `_add_hash`)
        self._digest_wire: tuple[tuple[int, int], dict[str, Any]] = ((-1, 0), {})
        self._owner = object()      # marks the `_Origin`s this table may change in place

    def fork(self) -> Table:
        """Another node's table holding what this one holds, for the price of its maps:
        record and origin objects stay shared until one side changes an origin, which
        it then copies. The simulator's steady start gives each of 10,000 nodes a fork
        of one converged table; 10,000 tables built record by record do not fit in RAM.
        """
        twin = Table(self.trust.fork(), max_records_per_origin=self.max_records_per_origin,
                     tombstone_grace_ms=self.tombstone_grace_ms, cache=self.cache)
        twin._records = dict(self._records)
        twin._origins = dict(self._origins)
        twin._floor = dict(self._floor)
        twin._hash, twin._changes, twin._digest_wire = self._hash, self._changes, self._digest_wire
        self._owner = object()      # both sides copy a shared entry before changing it
        return twin

    # --- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records.values())

    def get(self, origin: bytes, kind: str, key: str = NODE_KEY) -> Record | None:
        return self._records.get((origin, kind, key))

    def node(self, origin: bytes) -> Record | None:
        return self._records.get((origin, KIND_NODE, NODE_KEY))

    def nodes(self) -> Iterator[Record]:
        return (r for r in self._records.values() if r.kind == KIND_NODE)

    def of_origin(self, origin: bytes) -> list[Record]:
        held = self._origins.get(origin)
        return [] if held is None else held.records()

    def certificate(self, origin: bytes) -> Certificate | None:
        held = self._origins.get(origin)
        return None if held is None else held.cert

    @property
    def table_hash(self) -> bytes:
        return self._hash.to_bytes(32, "big")

    def digest(self) -> Digest:
        ca_id = self.trust.cluster.ca_id
        versions = {o: held.max_version for o, held in self._origins.items() if o != ca_id}
        hashes = {o: held.digest_hash() for o, held in self._origins.items() if o != ca_id}
        return Digest(self.table_hash, versions, frozenset(self.trust.revoked), hashes)

    def digest_wire(self) -> dict[str, Any]:
        """`digest().to_wire()`, built once per table state: a seed in a join storm sends
        it in every push-pull it serves, and at N=100 building it was a tenth of its CPU."""
        state = (self._changes, len(self.trust.revoked))
        if self._digest_wire[0] != state:
            self._digest_wire = (state, self.digest().to_wire())
        return self._digest_wire[1]

    def delta_since(self, digest: Digest) -> list[Record]:
        """What the holder of `digest` may lack: revocations first, then node records, then the rest.

        Every record of an origin whose hash differs from the digest's is sent;
        the receiver's merge drops what it already holds before any crypto.
        """
        revs = [r for r in self._records.values()
                if r.kind == KIND_REVOCATION and bytes.fromhex(r.key) not in digest.revocations]
        differ = [r for origin, held in self._origins.items()
                  if origin != self.trust.cluster.ca_id
                  and digest.origin_hashes.get(origin) != held.digest_hash()
                  for r in held.records()]
        differ.sort(key=lambda r: (r.kind != KIND_NODE, r.origin, r.version))
        return revs + differ

    # --- writing -------------------------------------------------------------

    def merge(self, wire_records: Iterable[Any], wall_ms: int) -> MergeResult:
        """Merge records from elsewhere; bad ones are counted by reason, never raised."""
        result = MergeResult()
        for obj in wire_records:
            try:
                admitted = self._admit(obj, wall_ms)
            except RemoteError as exc:
                result.rejected[exc.reason] += 1
                continue
            if admitted is None:
                result.duplicates += 1
                continue
            self._apply(*admitted, result, wall_ms)
        return result

    def publish(self, key: nacl.signing.SigningKey, kind: str, table_key: str,
                info: NodeInfo | ServiceInfo | None, version: int, wall_ms: int) -> MergeResult:
        """Sign and merge one of our own records; a rejection here is our own mistake."""
        origin = public_id(key)
        body = None if info is None else info.to_body()
        payload = wire.pack([origin, kind, table_key, version, body])
        record = [RECORD_TAG, *sign(key, Domain.RECORD, payload).to_wire()]
        result = self.merge([record], wall_ms)
        if result.rejected:
            reason = next(iter(result.rejected))
            raise UsageError(f"own {kind} record {table_key!r} rejected: {reason}")
        if result.duplicates:
            raise UsageError(f"own {kind} record {table_key!r}: version {version} is not new")
        return result

    def add_revocation(self, revocation: Revocation, wall_ms: int) -> MergeResult:
        """Inject a CA revocation (from `meshd ca revoke`) to be gossiped like any record."""
        return self.merge([[REVOCATION_TAG, *revocation.signed.to_wire()]], wall_ms)

    def drop_origin(self, origin: bytes, wall_ms: int) -> list[Change]:
        """Reap everything an origin said (dead or left long enough), and keep it out."""
        held = self._origins.get(origin)
        if held is None:
            return []
        changes = [self._remove(r) for r in held.records()]
        del self._origins[origin]
        self._floor[origin] = (held.max_version, wall_ms)
        return changes

    def collect(self, wall_ms: int) -> list[Change]:
        """Drop what everyone drops alike: old tombstones, expired certs and revocations."""
        changes = []
        for record in list(self._records.values()):
            if record.deleted and record.version + self.tombstone_grace_ms < wall_ms:
                floor = max(self._floor.get(record.origin, (0, 0))[0], record.version)
                self._floor[record.origin] = (floor, wall_ms)
                changes.append(self._remove(record))
        for rev in self.trust.expire_revocations(wall_ms):
            gone = self._records.get((rev.issuer, KIND_REVOCATION, rev.serial.hex()))
            if gone is not None:
                changes.append(self._remove(gone))
        expired = [origin for origin, held in self._origins.items()
                   if held.cert is not None and wall_ms - self.trust.skew_ms > held.cert.not_after_ms]
        for origin in expired:
            changes.extend(self.drop_origin(origin, wall_ms))
        for origin, (_, since) in list(self._floor.items()):
            if since + REAPED_MEMORY_MS < wall_ms:
                del self._floor[origin]
        return changes

    # --- internals -----------------------------------------------------------

    def _admit(self, obj: Any, wall_ms: int) -> tuple[Record, Certificate | None] | None:
        """A verified new record (with the certificate it carries), None if not new, or raise."""
        cached = self.cache.get(obj)
        record = cached if cached is not None else parse_record(obj)
        held = self._records.get(record.ident)
        if held is not None and not record.beats(held):
            return None
        if record.tag == RECORD_TAG:
            self._check_fresh(record, held)
        if cached is None:
            record = self._verified(record)
        return record, self._check_semantics(record, wall_ms)

    def _verified(self, record: Record) -> Record:
        """Signature checked and body typed, then cached for every later sight of it."""
        self._verify_signature(record)
        record = _with_info(record)
        self.cache.add(record)
        return record

    def warm(self, wire_records: Iterable[Any], wall_ms: int) -> None:
        """Do the crypto of a coming `merge` now, filling the caches it reads; the table
        itself does not change. The agent merges under the lock its gossip thread needs to
        answer probes, and on a starved host the signature checks of a push-pull's delta
        held that lock for a second: long enough to be suspected. So it warms first.

        The versions held are read without that lock: a stale read only verifies a record
        the merge then skips, or leaves one for the merge to verify. Bad records are left
        for the merge to refuse and count.
        """
        for obj in wire_records:
            try:
                record = self.cache.get(obj)
                if record is None:
                    record = parse_record(obj)
                    held = self._records.get(record.ident)
                    if held is not None and not record.beats(held):
                        continue
                    record = self._verified(record)
                if isinstance(record.info, NodeInfo):
                    self.trust.verify_certificate(record.info.cert, wall_ms)
            except RemoteError:
                continue

    def _check_fresh(self, record: Record, held: Record | None) -> None:
        floor = self._floor.get(record.origin)
        if held is None and floor is not None and record.version <= floor[0]:
            raise StaleError("record older than what this table already reaped")
        origin = self._origins.get(record.origin)
        if held is None and origin is not None and origin.count() >= self.max_records_per_origin:
            raise LimitError(f"origin holds {self.max_records_per_origin} records already")

    def _verify_signature(self, record: Record) -> None:
        if record.tag == REVOCATION_TAG:
            self.trust.verify_revocation(record.signed)
        else:
            verify(record.origin, Domain.RECORD, record.signed)

    def _check_semantics(self, record: Record, wall_ms: int) -> Certificate | None:
        """Receiver-specific checks: certificate chain and window, grants, known origin.

        Returns the certificate a node record carries, which becomes the origin's.
        """
        if record.tag == REVOCATION_TAG:
            # The signature check may have been another table's (a shared cache).
            if record.origin != self.trust.cluster.ca_id:
                raise UnknownCAError("revocation was issued by another CA")
            return None
        if record.kind == KIND_NODE:
            if not isinstance(record.info, NodeInfo):
                raise WireError("record: a node record cannot be deleted")
            cert = self.trust.verify_certificate(record.info.cert, wall_ms)
            record.info.check(record.origin, cert)
            return cert
        held = self.certificate(record.origin)
        if held is None:
            raise UnknownOriginError("record from an origin with no node record here")
        if isinstance(record.info, ServiceInfo):
            record.info.check(record.origin, held)
        return None

    def _apply(self, record: Record, cert: Certificate | None, result: MergeResult,
               wall_ms: int) -> None:
        held = self._own(record.origin)
        old = self._records.get(record.ident)
        if old is not None:
            self._add_hash(held, old, -1)
        self._records[record.ident] = record
        held.put(record)
        self._add_hash(held, record, 1)
        held.max_version = max(held.max_version, record.version)
        result.changes.append(Change(old, record))
        if cert is not None:
            held.cert = cert
        if isinstance(record.info, Revocation):
            self._apply_revocation(record.info, result, wall_ms)

    def _apply_revocation(self, rev: Revocation, result: MergeResult, wall_ms: int) -> None:
        self.trust.add_revocation(rev)
        cert = self.certificate(rev.node_id)
        if cert is not None and cert.serial == rev.serial:
            result.changes.extend(self.drop_origin(rev.node_id, wall_ms))

    def _remove(self, record: Record) -> Change:
        del self._records[record.ident]
        held = self._own(record.origin)
        held.discard(record)
        self._add_hash(held, record, -1)
        return Change(record, None)

    def _own(self, origin: bytes) -> _Origin:
        """The origin's entry, ours to change (copied first if a fork shares it)."""
        held = self._origins.get(origin)
        if held is None:
            held = self._origins[origin] = _Origin(self._owner)
        elif held.owner is not self._owner:
            held = self._origins[origin] = held.copy(self._owner)
        return held

    def _add_hash(self, held: _Origin, record: Record, sign: int) -> None:
        """Every record added or removed passes here: the table hash and counts follow."""
        self._changes += 1
        entry = sign * record.entry_hash()
        self._hash = (self._hash + entry) % HASH_MODULUS
        held.hash = (held.hash + entry) % ORIGIN_HASH_MODULUS
