"""kinship nodes, one kinship_agent.py process each, driven over the agent's stdin/stdout.

Each node runs ``kinship.Config.lan()``, the same timing profile as Serf's default, on
127.0.1.I:7947 (Serf uses 7946, so a leftover of one system never collides with the other).
The agent runs under this interpreter, which must have kinship installed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from .common import (
    AgentError,
    Driver,
    DriverSettings,
    MemberView,
    Status,
    View,
    agent_ip,
    node_name,
    stamp,
    run_command,
)

AGENT = Path(__file__).with_name("kinship_agent.py")
GOSSIP_PORT = 7947
CLUSTER_LABEL = "meshd-bench"
#: Matches the agent's LINE_LIMIT: a members answer at 254 nodes is one long line.
LINE_LIMIT = 1 << 20
#: Answers to requests that timed out can still arrive; skip at most this many to resync.
MAX_STALE_ANSWERS = 16
#: kinship's states as the agent names them; "dead" is what Serf calls "failed".
_STATUS = {
    "alive": Status.ALIVE,
    "suspect": Status.SUSPECT,
    "dead": Status.FAILED,
    "left": Status.LEFT,
}


class ControlChannel:
    """JSON-lines requests to one agent over its stdin/stdout, one at a time.

    Each request carries an id and the answer echoes it, so an answer that arrives after its
    request timed out is skipped instead of being read as the answer to the next request.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._lock = asyncio.Lock()
        self._last_id = 0

    async def request(self, timeout: float, **fields: str) -> dict[str, Any]:
        """Sends one request and returns its answer; raises AgentError on error or timeout."""
        async with self._lock:
            self._last_id += 1
            request_id = self._last_id
            try:
                answer = await asyncio.wait_for(self._exchange(request_id, fields), timeout)
            except TimeoutError as exc:
                raise AgentError(f"{fields.get('op')} timed out after {timeout} s") from exc
            except (ConnectionError, ValueError) as exc:
                raise AgentError(f"{fields.get('op')}: control pipe failed: {exc!r}") from exc
        if "error" in answer:
            raise AgentError(f"{fields.get('op')}: {answer['error']}")
        return answer

    async def _exchange(self, request_id: int, fields: dict[str, str]) -> dict[str, Any]:
        self._stdin.write(json.dumps({"id": request_id, **fields}).encode() + b"\n")
        await self._stdin.drain()
        for _ in range(MAX_STALE_ANSWERS + 1):
            line = await self._stdout.readline()
            if not line:
                raise ConnectionError("the agent closed stdout: it has exited")
            answer: dict[str, Any] = json.loads(line)
            if answer.get("id") == request_id:
                return answer
        raise ConnectionError(f"no answer to request {request_id} among stale answers")


class KinshipDriver(Driver):
    """kinship 0.4+ nodes (SWIM + Lifeguard in Rust, asyncio API) on 127.0.1.I:7947."""

    system = "kinship"

    def __init__(self, settings: DriverSettings) -> None:
        super().__init__(settings)
        self._channels: dict[int, ControlChannel] = {}

    @classmethod
    async def version(cls) -> str:
        out = await run_command([sys.executable, str(AGENT), "--version"], 30.0)
        return f"kinship {out.strip()}"

    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        argv = [
            sys.executable,
            str(AGENT),
            f"--name={node_name(index)}",
            f"--bind={agent_ip(index)}:{GOSSIP_PORT}",
            f"--cluster={CLUSTER_LABEL}",
        ]
        if self.settings.encrypt_key is not None:
            argv.append(f"--key={self.settings.encrypt_key}")
        with open(self.settings.workdir / f"kinship-{index}.log", "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        self._channels[index] = ControlChannel(proc)
        return proc

    async def _request(self, index: int, **fields: str) -> dict[str, Any]:
        return await self._channels[index].request(self.settings.rpc_timeout_s, **fields)

    async def ping(self, index: int) -> None:
        await self._request(index, op="ping")

    async def join(self, index: int, seed: int) -> None:
        await self._request(index, op="join", seed=f"{agent_ip(seed)}:{GOSSIP_PORT}")

    async def view(self, index: int) -> View:
        answer = await self._request(index, op="members")
        try:
            members = answer["members"]
            return {
                m["name"]: MemberView(_STATUS[m["state"]], m["meta"], stamp(m["since_ms"]))
                for m in members
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise AgentError(f"members on agent {index}: unreadable answer") from exc

    async def set_tag(self, index: int, key: str, value: str) -> None:
        await self._request(index, op="meta", key=key, value=value)

    async def leave(self, index: int) -> None:
        # The agent turns SIGTERM into kinship's graceful leave, then exits.
        self.send_signal(index, signal.SIGTERM)
