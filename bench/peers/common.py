"""The driver interface every system under test implements, and helpers the drivers share.

bench/vs_peers.py only ever talks to a ``Driver``: it launches agents, asks each for its
member list, and stops them. Keeping every system behind the same small interface is what
lets the harness measure Serf, kinship and (later) meshd in exactly the same way.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeAlias

#: Agent I gossips on 127.0.1.I; loopback /8 needs no configuration on Linux.
AGENT_NET = "127.0.1.0/24"
#: Largest agent index: 127.0.1.255 is the /24's broadcast address.
MAX_AGENTS = 254
#: How long a stop waits for a killed agent to be reaped, so stop_all() is bounded too.
REAP_TIMEOUT_S = 5.0


def agent_ip(index: int) -> str:
    """Gossip address of agent ``index`` (1-based); the net counters key on this range."""
    return f"127.0.1.{index}"


def control_ip(index: int) -> str:
    """Control/RPC address of agent ``index``, outside AGENT_NET so polling is not counted."""
    return f"127.0.2.{index}"


def node_name(index: int) -> str:
    """Node name of agent ``index``; every system uses the same names so views compare."""
    return f"n{index}"


class AgentError(Exception):
    """An agent did not answer, answered with an error, or its process is gone."""


class Status(enum.Enum):
    """A member's state as one agent reports it, normalised across systems."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as one agent sees it: its state and its tags (Serf) or meta (kinship)."""

    status: Status
    tags: Mapping[str, str] = field(default_factory=dict)
    #: Wall-clock second at which the agent learned the member's current state and tags,
    #: where the system reports it (meshd; the kinship agent's event stamps); None for Serf,
    #: whose changes are then timed by the poll that first saw them.
    since: float | None = None


def stamp(since_ms: object) -> float | None:
    """A member's ``since_ms`` as wall-clock seconds; None if absent or not a number."""
    if isinstance(since_ms, int) and not isinstance(since_ms, bool) and since_ms > 0:
        return since_ms / 1000
    return None


#: One agent's member list, by node name. Drivers include failed and left members for as long
#: as the agent still reports them; a member missing from the view counts as gone.
View: TypeAlias = Mapping[str, MemberView]


@dataclass(frozen=True, slots=True)
class DriverSettings:
    """What the harness hands every driver: a private temp dir, and the shared gossip key."""

    workdir: Path
    #: Base64 32-byte key when the run is encrypted, else None (plaintext for every system).
    encrypt_key: str | None = None
    #: Bound on any one control request, so a hung agent cannot stall a poll round.
    rpc_timeout_s: float = 5.0


class Driver(abc.ABC):
    """One membership system under test, running one real process per agent on loopback.

    A subclass implements how to start an agent and talk to it; this base class owns the
    processes it started so that kill -9 and cleanup always go by the PID we launched.
    """

    #: The column name in the result tables: "serf", "kinship", later "meshd".
    system: ClassVar[str]

    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    @classmethod
    @abc.abstractmethod
    async def version(cls) -> str:
        """The version of the system, for the results header."""

    @abc.abstractmethod
    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        """Starts agent ``index`` bound to agent_ip(index), not joined to anyone yet. Must use
        ``start_new_session=True`` so a Ctrl-C of the harness reaches only the harness."""

    @abc.abstractmethod
    async def ping(self, index: int) -> None:
        """Returns once agent ``index`` answers on its control channel; raises AgentError
        otherwise. The join clock starts only when every agent answers this."""

    @abc.abstractmethod
    async def join(self, index: int, seed: int) -> None:
        """Asks agent ``index`` to join the cluster through agent ``seed``."""

    @abc.abstractmethod
    async def view(self, index: int) -> View:
        """Agent ``index``'s member list, itself included; raises AgentError."""

    @abc.abstractmethod
    async def set_tag(self, index: int, key: str, value: str) -> None:
        """Sets one tag/meta key on agent ``index``; the harness times how fast it spreads."""

    @abc.abstractmethod
    async def leave(self, index: int) -> None:
        """Starts a graceful leave of agent ``index``; it may return before the agent exits."""

    async def launch(self, index: int) -> None:
        """Spawns agent ``index`` and records its process for kill() and stop_all()."""
        if not 1 <= index <= MAX_AGENTS:
            raise ValueError(f"agent index {index} outside 1..{MAX_AGENTS}")
        self._procs[index] = await self.spawn(index)

    def pid(self, index: int) -> int:
        """PID of agent ``index`` as we launched it."""
        return self._procs[index].pid

    def send_signal(self, index: int, sig: signal.Signals) -> None:
        """Signals agent ``index`` by the PID we launched, unless it has already been reaped."""
        _signal_if_running(self._procs[index], sig)

    def kill(self, index: int) -> None:
        """SIGKILLs agent ``index``: a crash, with no chance to tell anyone."""
        self.send_signal(index, signal.SIGKILL)

    async def stop_all(self) -> None:
        """SIGKILLs every agent this driver started and reaps it; safe to call twice."""
        procs = list(self._procs.values())
        for proc in procs:
            _signal_if_running(proc, signal.SIGKILL)
        await asyncio.gather(*(_reap(proc) for proc in procs))


def _signal_if_running(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signals by PID only while asyncio has not reaped the child, so the PID is still ours."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Waits, bounded, for a killed child so no zombie outlives the run."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)


async def run_command(argv: Sequence[str], timeout: float, stdin_data: bytes | None = None) -> str:
    """Runs a short command (a CLI call, nft) without blocking the loop and returns its stdout.

    Raises AgentError on a non-zero exit or on timeout; a command that overruns is SIGKILLed
    by its PID so polling never leaves stray processes behind.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin_data), timeout)
    except TimeoutError as exc:
        raise AgentError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} timed out") from exc
    finally:
        _signal_if_running(proc, signal.SIGKILL)
        await _reap(proc)
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise AgentError(f"{' '.join(argv[:2])} exited {proc.returncode}: {detail[:300]}")
    return out.decode()




def _read_proc(pid: int, name: str) -> str:
    """/proc/PID/NAME; a vanished agent is an AgentError like any other dead agent."""
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError as exc:
        raise AgentError(f"pid {pid} is gone: {exc}") from exc


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``, all threads, in ns precision from /proc/PID/task/*/schedstat.

    utime/stime in /proc/PID/stat advance in 10 ms ticks: an idle agent that runs
    1 ms per second is charged a whole tick now and then, which over a minute is
    noise of the same size as the value. schedstat's first field is the exact
    time on CPU; summing every thread counts kinship's Rust threads too.
    """
    total_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError as exc:
        raise AgentError(f"pid {pid} is gone: {exc}") from exc
    for task in tasks:
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read
    return total_ns / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/status VmRSS."""
    for line in _read_proc(pid, "status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AgentError(f"pid {pid} has no VmRSS: it has exited")
