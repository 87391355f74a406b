"""The control socket: HTTP/1.1 with JSON bodies over a Unix socket, versioned paths.

    GET  /v1/members   every member, this node included
    GET  /v1/status    this node: identity, addresses, counts, counters
    PUT  /v1/tags      {"set": {"k": "v"}, "unset": ["k2"]} -> {"tags": {...}}
    POST /v1/join      {"seeds": ["10.0.0.2:7946"]}: say hello to more seeds
    GET  /v1/watch     one JSON line per membership event, until the client goes

Errors are `{"error": {"code": ..., "message": ...}}` with a matching HTTP
status, so `curl --unix-socket S http://meshd/v1/members` works as well as
`meshd members`. The socket is mode 0660: whoever may use it may change this
node's tags, as with any local daemon's control socket.

The routes talk to the agent only through `ControlTarget`, which the agent
implements; this module never reaches into the gossip engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
from pathlib import Path
from typing import (
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Protocol,
    Sequence,
)

from meshd.config import Endpoint
from meshd.errors import ConfigError, LocalError, MeshdError, UsageError
from meshd.events import Subscription
from meshd.serve import Reply, Request, StreamReply, json_error, json_reply

SOCKET_MODE = 0o660
MAX_BODY_BYTES = 64 * 1024
MAX_CONNECTIONS = 32
WATCH_QUEUE = 1024
MAX_SEEDS = 64


class ControlTarget(Protocol):
    """What the control socket may ask of a running agent."""

    def members_json(self) -> bytes: ...
    def status(self) -> dict[str, Any]: ...
    def subscribe(self, maxsize: int) -> Subscription: ...
    async def set_tags(self, tags: Mapping[str, str], unset: Iterable[str]) -> Mapping[str, str]: ...
    async def join(self, seeds: Sequence[Endpoint]) -> None: ...


Route = Callable[["Control", Request], Awaitable[Reply | StreamReply]]


class Control:
    """Routes requests to the agent; `handle` is the `serve.http_exchange` handler."""

    def __init__(self, target: ControlTarget) -> None:
        self._target = target

    async def handle(self, request: Request) -> Reply | StreamReply:
        methods = ROUTES.get(request.path)
        if methods is None:
            return json_error(404, "not_found", f"no such endpoint {request.path}")
        route = methods.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            return json_error(405, "method_not_allowed",
                              f"{request.path} takes {allowed}", (("allow", allowed),))
        try:
            return await route(self, request)
        except LocalError as exc:  # bad input: ours to refuse, not to fail on
            return json_error(400, "invalid_argument", str(exc))
        except MeshdError as exc:
            return json_error(500, "internal", str(exc))

    async def members(self, request: Request) -> Reply:
        return Reply(200, self._target.members_json())

    async def status(self, request: Request) -> Reply:
        return json_reply(200, self._target.status())

    async def tags(self, request: Request) -> Reply:
        body = _json_object(request.body)
        tags = body.get("set", {})
        unset = body.get("unset", [])
        if not isinstance(tags, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise UsageError("'set' must be an object of string values")
        if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
            raise UsageError("'unset' must be a list of strings")
        result = await self._target.set_tags(tags, unset)
        return json_reply(200, {"tags": dict(result)})

    async def join(self, request: Request) -> Reply:
        seeds = _json_object(request.body).get("seeds")
        if not isinstance(seeds, list) or not 1 <= len(seeds) <= MAX_SEEDS:
            raise UsageError(f"'seeds' must be a list of 1 to {MAX_SEEDS} host:port strings")
        try:
            endpoints = [Endpoint.parse(seed) for seed in seeds if isinstance(seed, str)]
        except ValueError as exc:
            raise UsageError(f"seeds: {exc}") from None
        if len(endpoints) != len(seeds):
            raise UsageError("seeds must be host:port strings")
        await self._target.join(endpoints)
        return json_reply(200, {"seeds": [str(e) for e in endpoints]})

    async def watch(self, request: Request) -> StreamReply:
        return StreamReply(_watch_lines(self._target.subscribe(WATCH_QUEUE)))


ROUTES: dict[str, dict[str, Route]] = {
    "/v1/members": {"GET": Control.members},
    "/v1/status": {"GET": Control.status},
    "/v1/tags": {"PUT": Control.tags},
    "/v1/join": {"POST": Control.join},
    "/v1/watch": {"GET": Control.watch},
}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise UsageError("the request body is not JSON") from None
    if not isinstance(value, dict):
        raise UsageError("the request body must be a JSON object")
    return value


async def _watch_lines(subscription: Subscription) -> AsyncGenerator[bytes, None]:
    """One JSON line per event, until the feed closes (the serving side ends the stream
    when the client goes)."""
    try:
        async for event in subscription:
            yield json.dumps(event.to_json()).encode() + b"\n"
    finally:
        subscription.close()


# --- the socket file --------------------------------------------------------------


async def bind(path: Path, connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]
               ) -> asyncio.Server:
    """Bind the control socket (not yet serving), mode 0660, its folder created.

    A leftover socket file from a crashed agent is replaced; one that still
    answers belongs to a running agent, and starting a second is an error.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"control_socket: cannot create {path.parent}: "
                          f"{exc.strerror or exc}") from None
    _remove_stale(path)
    try:
        server = await asyncio.start_unix_server(connected, path, start_serving=False)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        raise ConfigError(f"control_socket: cannot listen on {path}: {exc.strerror or exc}") from None
    return server


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"control_socket: {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"control_socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(f"control_socket: {path}: {exc.strerror or exc}") from None
        path.unlink(missing_ok=True)  # nobody answers: a crashed agent's leftover
        return
    finally:
        probe.close()
    raise ConfigError(f"control_socket: {path}: another agent is already listening")


def unlink(path: Path, bound_inode: int | None) -> None:
    """Remove our socket file, unless another agent has replaced it since."""
    with contextlib.suppress(OSError):
        if bound_inode is not None and path.lstat().st_ino == bound_inode:
            path.unlink()


def inode(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.lstat().st_ino
    return None
