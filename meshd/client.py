"""A blocking client of the control socket, for the CLI and scripts.

Plain `http.client` over a Unix socket: one request per connection, bounded
in time and in the size of what it reads. Every failure, from a missing
socket to an error answer, is one `ControlError` whose message says what to
do, so `meshd members` prints one line and exits non-zero.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from meshd.errors import MeshdError

DEFAULT_TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024


class ControlError(MeshdError):
    """The agent could not be reached, or answered with an error."""

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("meshd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Talks to one agent's control socket."""

    def __init__(self, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def members(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/members")

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def set_tags(self, tags: Mapping[str, str], unset: Iterable[str] = ()) -> dict[str, str]:
        return self.request("PUT", "/v1/tags", {"set": dict(tags), "unset": list(unset)})["tags"]

    def join(self, seeds: Iterable[str]) -> list[str]:
        return self.request("POST", "/v1/join", {"seeds": list(seeds)})["seeds"]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded JSON answer, or a `ControlError`."""
        conn = _UnixConnection(self.path, self.timeout_s)
        try:
            response = self._send(conn, method, path, body)
            data = response.read(MAX_RESPONSE_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        if len(data) > MAX_RESPONSE_BYTES:
            raise ControlError(f"the answer to {path} exceeds {MAX_RESPONSE_BYTES} bytes", "too_large")
        return _decode(response.status, data)

    def watch(self) -> Iterator[dict[str, Any]]:
        """Events as the agent reports them, one dict each, until the agent goes away."""
        conn = _UnixConnection(self.path, self.timeout_s)
        try:
            response = self._send(conn, "GET", "/v1/watch", None)
            if response.status != 200:
                _decode(response.status, response.read(MAX_RESPONSE_BYTES))
            if conn.sock is not None:
                conn.sock.settimeout(None)  # events come when they come
            yield from _lines(response)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()

    def _send(self, conn: _UnixConnection, method: str, path: str,
              body: Any) -> http.client.HTTPResponse:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        return conn.getresponse()

    def _unreachable(self, exc: BaseException) -> ControlError:
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            reason = "no agent is listening (is `meshd agent` running?)"
        elif isinstance(exc, PermissionError):
            reason = "permission denied"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout_s:g} s"
        elif isinstance(exc, OSError) and exc.errno == errno.ENOTSOCK:
            reason = "not a socket"
        else:
            reason = str(exc) or type(exc).__name__
        return ControlError(f"control socket {self.path}: {reason}")


def _lines(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    while line := response.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
            raise ControlError("the agent sent an event line that is too long", "too_large")
        try:
            yield json.loads(line)
        except ValueError:
            raise ControlError("the agent sent an event that is not JSON", "bad_response") from None


def _decode(status: int, data: bytes) -> Any:
    try:
        body = json.loads(data)
    except ValueError:
        raise ControlError(f"the agent answered HTTP {status} with no JSON", "bad_response") from None
    if 200 <= status < 300:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise ControlError(f"the agent answered HTTP {status}", "bad_response")
    raise ControlError(str(error.get("message", f"HTTP {status}")), str(error.get("code", status)))
