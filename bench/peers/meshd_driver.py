"""meshd agents in membership-only mode, driven through each agent's control socket.

Each agent is a real ``meshd agent`` process on 127.0.1.I:7948 (Serf has 7946, kinship
7947), with its own keys and a certificate from one CA made for the run, all written by the
``meshd`` commands themselves. The harness talks to the agents over their Unix control
sockets (in the work dir), which adds nothing to the gossip byte counters; requests go
through ``meshd.client`` on a worker thread, which costs far less than a process per poll.
Member lists come from each agent's event stream (see meshd_mirror.py), so the poll rounds
that time each phase cost the agents nothing.

Agents use the ``lan`` profile, Serf's default. ``--encrypt`` does not apply: in
membership-only mode meshd authenticates every datagram (a MAC per pair of nodes) but does
not encrypt it; over WireGuard the tunnel encrypts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import meshd
from meshd import cli
from meshd.client import Client, ControlError
from meshd.config import render_local

from .common import (
    AgentError,
    Driver,
    DriverSettings,
    View,
    agent_ip,
    node_name,
)
from .meshd_mirror import Mirror

GOSSIP_PORT = 7948
PROFILE = "lan"
T = TypeVar("T")


def _meshd(*args: str | Path) -> None:
    """One ``meshd`` command in-process (key and certificate files); output discarded."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(arg) for arg in args])
    if code != 0:
        raise AgentError(f"meshd {' '.join(map(str, args[:2]))} exited {code}")


class MeshdDriver(Driver):
    """``meshd agent`` per node on 127.0.1.I:7948, control socket in the work dir."""

    system = "meshd"

    def __init__(self, settings: DriverSettings) -> None:
        super().__init__(settings)
        self._ca = settings.workdir / "ca"
        self._clients: dict[int, Client] = {}
        self._mirrors: dict[int, asyncio.Future[Mirror]] = {}

    @classmethod
    async def version(cls) -> str:
        return f"meshd {meshd.__version__}"

    def _prepare(self, index: int) -> Path:
        """Keys, certificate and config of agent ``index``; the CA on first use."""
        if not self._ca.exists():
            _meshd("ca", "init", "--dir", self._ca)
        folder = self.settings.workdir / node_name(index)
        _meshd("keygen", "--dir", folder)
        _meshd("ca", "sign", "--dir", self._ca, "--node-pub", folder / "node.pub",
               "--name", node_name(index), "--out", folder / "node.cert")
        config = folder / "meshd.toml"
        config.write_text(render_local(node_name(index), f"{agent_ip(index)}:{GOSSIP_PORT}",
                                       profile=PROFILE))
        self._clients[index] = Client(folder / "meshd.sock", self.settings.rpc_timeout_s)
        return config

    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        config = self._prepare(index)
        argv = [sys.executable, "-m", "meshd", "agent", "--config", str(config),
                "--log-level", "warning"]
        with open(self.settings.workdir / f"meshd-{index}.log", "wb") as log:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def _call(self, index: int, request: Callable[[Client], T]) -> T:
        """One control request on a worker thread; bounded by the client's own timeout."""
        try:
            return await asyncio.to_thread(request, self._clients[index])
        except ControlError as exc:
            raise AgentError(f"agent {index}: {exc}") from exc

    async def ping(self, index: int) -> None:
        """The agent answers, and its event stream is followed (before any clock starts)."""
        await self._call(index, Client.status)
        await self._watched(index)

    async def join(self, index: int, seed: int) -> None:
        await self._call(index, lambda c: c.join([f"{agent_ip(seed)}:{GOSSIP_PORT}"]))

    async def view(self, index: int) -> View:
        """From the agent's event stream (see meshd_mirror.py)."""
        try:
            return (await self._watched(index)).view()
        except AgentError as exc:
            raise AgentError(f"agent {index}: {exc}") from exc

    async def _watched(self, index: int) -> Mirror:
        """Agent ``index``'s mirror, started on first use."""
        mirror = self._mirrors.get(index)
        if mirror is None:
            mirror = self._mirrors[index] = asyncio.ensure_future(self._mirror(index))
        return await mirror

    async def _mirror(self, index: int) -> Mirror:
        mirror = Mirror(self._clients[index].path, lambda: self._call(index, Client.members))
        try:
            await mirror.start(self.settings.rpc_timeout_s)
        except (OSError, TimeoutError, AgentError) as exc:
            self._mirrors.pop(index, None)   # a later view or ping tries again
            raise AgentError(f"agent {index}: cannot watch: {exc}") from exc
        return mirror

    async def set_tag(self, index: int, key: str, value: str) -> None:
        await self._call(index, lambda c: c.set_tags({key: value}))
        if index in self._mirrors:
            await (await self._mirrors[index]).resync()

    async def stop_all(self) -> None:
        mirrors, self._mirrors = list(self._mirrors.values()), {}
        for mirror in mirrors:
            if mirror.done() and not mirror.cancelled() and mirror.exception() is None:
                await mirror.result().stop()
            else:
                mirror.cancel()   # still starting: it closes what it opened
        await super().stop_all()

    async def leave(self, index: int) -> None:
        # SIGTERM is meshd's graceful leave: a signed `left` record, pushed, then exit.
        self.send_signal(index, signal.SIGTERM)
