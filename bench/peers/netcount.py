"""Counts gossip traffic between agents with an nftables table the harness owns.

Every packet from or to an agent's gossip address (127.0.1.0/24) is counted once, at the
output hook, for UDP and TCP alike, so every system is measured the same way. Counters are
split by protocol and TCP header length (data offset), which turns IP byte counts into exact
L4 payload bytes without capturing packets.

The table is counted as a whole, not per source address: Serf (memberlist) dials its TCP
push-pulls without binding a local address, so their packets leave from 127.0.0.1 and a
per-source counter would miss them. Each packet is sent by exactly one agent, so the total
divided by N is the mean traffic sent per agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from .common import AGENT_NET, AgentError, run_command

TABLE = "meshd-bench"
#: IPv4 header without options, which loopback traffic never carries.
IPV4_HEADER = 20
UDP_HEADER = 8
#: TCP data offsets, in 32-bit words: 5 (no options) to 15 (40 bytes of options).
TCP_DOFFS = range(5, 16)
NFT_TIMEOUT_S = 10.0
#: Counter names; bare "udp" or "tcp" would be nft keywords.
UDP_COUNTER = "gossip_udp"
TCP_PREFIX = "gossip_tcp_doff"


@dataclass(frozen=True, slots=True)
class Traffic:
    """Byte and packet totals: wire (IPv4 incl. headers) and L4 payload."""

    packets: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.packets - other.packets,
            self.wire_bytes - other.wire_bytes,
            self.payload_bytes - other.payload_bytes,
        )


def _ruleset() -> str:
    """The table: one counter for UDP, one per TCP data offset, fed by one jump per packet."""
    tcp_counters = [f"{TCP_PREFIX}{d}" for d in TCP_DOFFS]
    counters = "\n".join(f"    counter {name} {{}}" for name in [UDP_COUNTER, *tcp_counters])
    doff_map = ", ".join(f'{d} : "{TCP_PREFIX}{d}"' for d in TCP_DOFFS)
    return f"""table inet {TABLE} {{
{counters}
    chain count {{
        meta l4proto udp counter name "{UDP_COUNTER}"
        meta l4proto tcp counter name tcp doff map {{ {doff_map} }}
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ip saddr {AGENT_NET} jump count
        ip saddr != {AGENT_NET} ip daddr {AGENT_NET} jump count
    }}
}}
"""


def _header_bytes(name: str) -> int:
    """Per-packet header bytes of the packets a counter counts."""
    if name == UDP_COUNTER:
        return IPV4_HEADER + UDP_HEADER
    return IPV4_HEADER + 4 * int(name.removeprefix(TCP_PREFIX))


class NftCounters:
    """The ``inet meshd-bench`` table: created on enter, deleted on exit, never anyone else's.

    It refuses to start if the table already exists rather than take over or delete a table
    that another run may be using.
    """

    def __init__(self) -> None:
        self._created = False

    async def __aenter__(self) -> Self:
        try:
            await run_command(["nft", "list", "table", "inet", TABLE], NFT_TIMEOUT_S)
        except AgentError:
            pass
        else:
            raise RuntimeError(
                f"nft table inet {TABLE} already exists: another benchmark is running, or a "
                f"killed one left it; remove it with `nft delete table inet {TABLE}`"
            )
        await run_command(["nft", "-f", "-"], NFT_TIMEOUT_S, _ruleset().encode())
        self._created = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._created:
            await run_command(["nft", "delete", "table", "inet", TABLE], NFT_TIMEOUT_S)
            self._created = False

    async def read(self) -> Traffic:
        """Current totals since the table was created; callers subtract two reads."""
        out = await run_command(
            ["nft", "-j", "list", "counters", "table", "inet", TABLE], NFT_TIMEOUT_S
        )
        total = Traffic()
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is None:
                continue
            packets, wire = counter["packets"], counter["bytes"]
            payload = wire - packets * _header_bytes(counter["name"])
            total = Traffic(
                total.packets + packets,
                total.wire_bytes + wire,
                total.payload_bytes + payload,
            )
        return total
