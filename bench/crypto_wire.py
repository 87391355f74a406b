#!/usr/bin/env python3
"""Cost of the sans-IO foundation: Ed25519, the wire codec, table merge and table memory.

Everything runs through meshd's own code paths (`identity.sign`/`verify`,
`wire.encode_message`/`decode_message`, `table.parse_record`, `Table.merge`),
on records built with `Table.publish`, so the numbers are what the daemon and
the simulator pay. Prints a markdown table; `--out FILE` also appends it.

    .venv/bin/python bench/crypto_wire.py
    .venv/bin/python bench/crypto_wire.py --records 10000 --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import ipaddress
import platform
import sys
import time
import tracemalloc
from typing import Any, Callable

from meshd import identity, wire
from meshd.identity import Certificate, Cluster, Trust
from meshd.records import KIND_NODE, KIND_SERVICE, NODE_KEY, NodeInfo, ServiceInfo
from meshd.table import RecordCache, Table, parse_record
from meshd.wire import Domain, MsgType

WALL_MS = 1_767_225_600_000
DAY_MS = 86_400_000
SERVICES_PER_NODE = 4
MESSAGE_RECORDS = 100


def key(label: str) -> Any:
    return identity.signing_key_from_seed(hashlib.sha256(label.encode()).digest())


def build_records(count: int) -> tuple[Cluster, list[list[Any]]]:
    """`count` signed records: nodes with SERVICES_PER_NODE services each, via `Table.publish`."""
    ca = key("bench/ca")
    cluster = Cluster.issue(ca, ipaddress.IPv6Network("fd42:42:42::/48"),
                            identity.DEFAULT_SERVICE_RANGE, "routed", WALL_MS)
    trust = Trust(cluster)
    wires: list[list[Any]] = []
    for i in range((count + SERVICES_PER_NODE) // (SERVICES_PER_NODE + 1)):
        node = key(f"bench/node/{i}")
        subnet = ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")
        cert = Certificate.issue(ca, identity.public_id(node), f"n{i}", {"blue": [subnet]},
                                 WALL_MS - DAY_MS, WALL_MS + 30 * DAY_MS,
                                 i.to_bytes(identity.SERIAL_BYTES, "big"))
        info = NodeInfo(name=f"n{i}", cert=cert.signed, gossip=f"192.0.2.{i % 250 + 1}:7946",
                        endpoints=(f"192.0.2.{i % 250 + 1}:51820",), wg_key=bytes(32),
                        subnets={"blue": (subnet,)}, tags={"role": "bench"})
        scratch = Table(trust, cache=RecordCache())
        version = 1
        scratch.publish(node, KIND_NODE, NODE_KEY, info, version, WALL_MS)
        for s in range(SERVICES_PER_NODE):
            svc = ServiceInfo("blue", f"svc{s}", subnet[10 + s], ((8080 + s, "tcp"),))
            version += 1
            scratch.publish(node, KIND_SERVICE, svc.key, svc, version, WALL_MS)
        wires += [r.to_wire() for r in scratch.delta_since(Table(trust).digest())]
    return cluster, wires[:count]


def rate(fn: Callable[[], Any], min_s: float) -> float:
    """Calls per second of `fn`, repeated for at least `min_s` seconds."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_s or calls == 0:
        fn()
        calls += 1
    return calls / elapsed


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(count: int, min_s: float) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    cluster, wires = build_records(count)
    signer = key("bench/node/0")
    signed_service = wires[1]
    payload = signed_service[1]

    sign = rate(lambda: identity.sign(signer, Domain.RECORD, payload), min_s)
    signed = identity.sign(signer, Domain.RECORD, payload)
    signer_id = identity.public_id(signer)
    verify = rate(lambda: identity.verify(signer_id, Domain.RECORD, signed), min_s)
    rows += [(f"Ed25519 sign ({len(payload)}-byte record payload)", f"{sign:,.0f}", "/s"),
             ("Ed25519 verify", f"{verify:,.0f}", "/s")]

    batch = wires[:MESSAGE_RECORDS]
    body = {"r": batch}
    message = wire.encode_message(MsgType.SYNC_DELTA, signer_id, body)

    def decode() -> None:
        msg = wire.decode_message(message, wire.MAX_STREAM_FRAME_BYTES)
        for obj in msg.body["r"]:
            parse_record(obj)

    encode_rate = rate(lambda: wire.encode_message(MsgType.SYNC_DELTA, signer_id, body), min_s)
    decode_rate = rate(decode, min_s)
    rows += [(f"encode a {MESSAGE_RECORDS}-record SYNC_DELTA ({len(message):,} bytes)",
              f"{encode_rate:,.0f}", "msg/s"),
             (f"decode it + parse_record x{MESSAGE_RECORDS}", f"{decode_rate:,.0f}", "msg/s")]

    table = Table(Trust(cluster), cache=RecordCache())
    first_s, first = timed(lambda: table.merge(wires, WALL_MS))
    assert len(first.changes) == count and not first.rejected, first.rejected
    again_s, again = timed(lambda: table.merge(wires, WALL_MS))
    assert again.duplicates == count
    rows += [(f"merge {count:,} records into an empty table (verify each)", f"{first_s:.3f}",
              f"s ({count / first_s:,.0f} rec/s)"),
             (f"re-merge the same {count:,} (dedup path)", f"{again_s:.3f}",
              f"s ({count / again_s:,.0f} rec/s)")]

    del table, first, again
    own, shared = table_memory(cluster, wires)
    scale = 10_000 / count
    rows += [("table memory per 10,000 records, with its own RecordCache",
              f"{own * scale / 2**20:.2f}", "MiB"),
             ("table memory per 10,000 records, cache shared (simulator)",
              f"{shared * scale / 2**20:.2f}", "MiB")]
    return rows


def table_memory(cluster: Cluster, wires: list[list[Any]]) -> tuple[int, int]:
    """Bytes a table allocates for `wires` (the wire bytes themselves exist beforehand)."""
    warm = RecordCache()
    Table(Trust(cluster), cache=warm).merge(wires, WALL_MS)
    results = []
    for cache in (None, warm):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        table = Table(Trust(cluster), cache=cache if cache is not None else RecordCache())
        table.merge(wires, WALL_MS)
        gc.collect()
        results.append(tracemalloc.get_traced_memory()[0] - before)
        tracemalloc.stop()
        del table
    return results[0], results[1]


def render(rows: list[tuple[str, str, str]], count: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"### crypto_wire ({stamp}, Python {platform.python_version()}, "
            f"{platform.machine()}, {count:,} records)\n\n")
    lines = ["| measure | value | unit |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value} | {unit} |" for name, value, unit in rows]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="records to merge (default 10000)")
    parser.add_argument("--min-s", type=float, default=1.0, help="seconds per rate measurement")
    parser.add_argument("--out", help="also append the table to this markdown file")
    args = parser.parse_args(argv)
    if args.records < MESSAGE_RECORDS:
        parser.error(f"--records must be at least {MESSAGE_RECORDS}")
    text = render(measure(args.records, args.min_s), args.records)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as out:
            out.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
