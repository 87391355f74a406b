"""What the gossip engine reports upward: frozen, past-tense events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from meshd.table import Change

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    node_id: bytes
    name: str
    incarnation: int
    #: When the engine learned it (the wall clock of the input that caused it): the shell
    #: may publish it later, after the loop wakes.
    wall_ms: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class MemberJoined(MemberEvent):
    """A node record for a node we did not know (or had reaped) arrived."""


@dataclass(frozen=True, slots=True)
class MemberUpdated(MemberEvent):
    """A known member published a newer record (tags, endpoints, subnets)."""

    tags: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class MemberSuspected(MemberEvent):
    """Someone failed to reach this member; it has a while to refute."""


@dataclass(frozen=True, slots=True)
class MemberAlive(MemberEvent):
    """A suspected or dead member proved itself with a newer signed record."""


@dataclass(frozen=True, slots=True)
class MemberDied(MemberEvent):
    """The suspicion timed out without a refutation."""


@dataclass(frozen=True, slots=True)
class MemberLeft(MemberEvent):
    """The member said goodbye with a signed `left` record."""


@dataclass(frozen=True, slots=True)
class MemberReaped(MemberEvent):
    """A dead or left member's records were collected."""


@dataclass(frozen=True, slots=True)
class RecordsMerged:
    """Table changes from one merge, for the layers above (services, routes, DNS)."""

    changes: tuple[Change, ...]
