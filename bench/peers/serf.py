"""HashiCorp Serf agents, driven through the ``serf`` CLI over each agent's RPC address.

Updates are tags (``serf tags -set``), read back from ``serf members``: a tag is per-node
metadata gossiped like kinship's meta, and reading it from the member list lets every system
be observed by the same polling loop. ``serf event`` would measure Serf's separate user-event
broadcast instead, which kinship's ``update_meta`` has no counterpart for.
"""

from __future__ import annotations

import asyncio
import json
import shutil

from .common import (
    AgentError,
    Driver,
    MemberView,
    Status,
    View,
    agent_ip,
    control_ip,
    node_name,
    run_command,
)

GOSSIP_PORT = 7946
RPC_PORT = 7373
#: Serf's member statuses; "leaving" is still a member until it reads "left". Serf shows no
#: suspect state (memberlist keeps it internal); any status not listed reads as SUSPECT.
_STATUS = {
    "alive": Status.ALIVE,
    "leaving": Status.ALIVE,
    "left": Status.LEFT,
    "failed": Status.FAILED,
}


def _serf() -> str:
    """Path of the serf binary, with an install hint when it is missing."""
    path = shutil.which("serf")
    if path is None:
        raise RuntimeError("serf not found: apt-get install -y --no-install-recommends serf")
    return path


class SerfDriver(Driver):
    """``serf agent`` per node on 127.0.1.I:7946 with RPC on 127.0.2.I:7373, LAN profile."""

    system = "serf"

    @classmethod
    async def version(cls) -> str:
        out = await run_command([_serf(), "version"], 10.0)
        return f"Serf {out.splitlines()[0].removeprefix('Serf ').strip()}"

    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        argv = [
            _serf(),
            "agent",
            f"-node={node_name(index)}",
            f"-bind={agent_ip(index)}:{GOSSIP_PORT}",
            f"-rpc-addr={control_ip(index)}:{RPC_PORT}",
            "-log-level=warn",
        ]
        if self.settings.encrypt_key is not None:
            argv.append(f"-encrypt={self.settings.encrypt_key}")
        with open(self.settings.workdir / f"serf-{index}.log", "wb") as log:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def _rpc(self, index: int, *args: str) -> str:
        """One serf CLI command against agent ``index``'s RPC address."""
        command, *rest = args
        argv = [_serf(), command, f"-rpc-addr={control_ip(index)}:{RPC_PORT}", *rest]
        return await run_command(argv, self.settings.rpc_timeout_s)

    async def ping(self, index: int) -> None:
        await self._rpc(index, "members")

    async def join(self, index: int, seed: int) -> None:
        await self._rpc(index, "join", f"{agent_ip(seed)}:{GOSSIP_PORT}")

    async def view(self, index: int) -> View:
        out = await self._rpc(index, "members", "-format=json")
        try:
            members = json.loads(out)["members"]
            return {
                m["name"]: MemberView(_STATUS.get(m["status"], Status.SUSPECT), m["tags"] or {})
                for m in members
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError(f"serf members on agent {index}: unreadable output") from exc

    async def set_tag(self, index: int, key: str, value: str) -> None:
        await self._rpc(index, "tags", "-set", f"{key}={value}")

    async def leave(self, index: int) -> None:
        # SIGTERM makes a Serf agent exit without leaving unless leave_on_terminate is set;
        # `serf leave` is Serf's own graceful leave, after which the agent exits.
        await self._rpc(index, "leave")
