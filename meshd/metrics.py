"""Counters and gauges as plain data, rendered in the Prometheus text format.

The agent does not keep a registry of live metric objects: the counts it
needs already live where they happen (the gossip engine's `Stats`, the
shell's own drop counter), so a scrape reads them into `Family` values and
`exposition` renders those. Nothing here does IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COUNTER, GAUGE = "counter", "gauge"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric name with its help text and labelled samples."""

    name: str
    kind: str
    help: str
    samples: tuple[tuple[Labels, float], ...]

    @classmethod
    def single(cls, name: str, kind: str, help: str, value: float) -> Family:
        return cls(name, kind, help, (((), value),))

    @classmethod
    def by_label(cls, name: str, kind: str, help: str, label: str,
                 values: Mapping[str, float]) -> Family:
        """One sample per value of one label (`meshd_dropped_total{reason="..."}`)."""
        return cls(name, kind, help,
                   tuple((((label, key),), value) for key, value in sorted(values.items())))


def exposition(families: Iterable[Family]) -> str:
    """The text format: HELP and TYPE lines, then one line per sample."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape(family.help, quotes=False)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value, quotes=True)}"' for key, value in labels) + "}"


def _escape(text: str, *, quotes: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
