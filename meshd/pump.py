"""The gossip datagram path on a thread of its own, blocked in poll(2) between wake-ups.

An idle node's CPU is its wake-ups: its own probe, the ack to it, a peer's
probe, about three a second. Through asyncio each costs ~0.2 ms on a small VM
(the loop's bookkeeping around one `recvfrom`); a thread that polls the UDP
socket and a wake pipe directly costs about half that. So the engine's
datagrams and timers run here, and the event loop sleeps until there is
something for it: events, push-pulls to start, a version to persist.

The engine is shared with the loop (commands, push-pull sessions, snapshots),
so both sides touch it only under one lock, held for one batch of datagrams
at a time. Whoever changes the engine from outside sends what it queued and
calls `reschedule()`, which wakes the thread if the deadline moved sooner.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from meshd.gossip.engine import Address, Gossip

log = logging.getLogger("meshd.pump")

#: Datagrams read per wake-up before the engine runs; a join storm fills the socket
#: buffer, and a batch spends one lock hold and one deadline computation on many.
MAX_BATCH = 64
RECV_BYTES = 65_535
#: How long `stop()` waits for the thread (it only has to finish one batch).
STOP_TIMEOUT_S = 5.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DatagramPump:
    """Runs `engine`'s datagram side on a thread; `sock` must be bound and non-blocking.

    `on_output` is called on the thread, without the lock, when the engine holds
    something for the shell (see `wants_shell`); `on_exit` once, with the exception that
    ended the thread or None.
    """

    def __init__(self, sock: socket.socket, engine: Gossip, lock: threading.RLock, *,
                 wants_shell: Callable[[], bool], on_output: Callable[[], None],
                 on_exit: Callable[[BaseException | None], None],
                 drop: Callable[[str, BaseException | None], None]) -> None:
        self._sock = sock
        self._engine = engine
        self._lock = lock
        self._wants_shell = wants_shell
        self._on_output = on_output
        self._on_exit = on_exit
        self._drop = drop
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Whoever is last, `stop()` or a thread that outlived its wait, closes the pipe;
        # `poke()` checks under this lock, so it never writes to a closed (or reused) fd.
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._stopping = False
        #: The deadline the thread sleeps until (read and set under `lock`).
        self._wake_at = math.inf
        self._thread = threading.Thread(target=self._main, name="meshd-gossip", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reschedule(self) -> None:
        """From any thread, after changing the engine and sending what it queued: wakes
        the thread only if the engine's deadline is now sooner than the one the thread
        sleeps until. A push-pull changes the engine with every frame it reads, and a
        join runs several; most of them move no deadline, and a wake-up for each would
        cost the thread's lock and a deadline computation for nothing."""
        with self._lock:
            sooner = self._engine.next_deadline() < self._wake_at
        if sooner:
            self.poke()

    def poke(self) -> None:
        """From any thread: wake the thread now, to re-read the deadline (or to stop)."""
        with self._pipe_lock:
            if not self._pipe_open:
                return   # stopped: nothing left to wake
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass   # the pipe is full, so a wake-up is pending anyway

    def send(self, datagrams: list[tuple[bytes, Address]], *, last_try: bool = True
             ) -> list[tuple[bytes, Address]]:
        """Send now, from any thread; returns what the kernel had no room for. That is
        counted as dropped only on the `last_try`: a caller that tries again later has
        not lost it yet."""
        refused = []
        for data, addr in datagrams:
            try:
                self._sock.sendto(data, addr)
            except BlockingIOError:
                refused.append((data, addr))
                if last_try:
                    self._drop("send_busy", None)
            except OSError as exc:
                self._drop("send_error", exc)
        return refused

    def stop(self) -> None:
        """Blocks until the thread has finished its batch and exited (bounded); the pipe
        is closed then, or by the thread as it exits if it outlived the wait."""
        self._stopping = True
        self.poke()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._close_pipe()

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    # --- the thread ---------------------------------------------------------------

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            self._loop()
        except BaseException as exc:   # reported to the owner, which ends the agent
            error = exc
            log.exception("gossip thread failed error=%r", exc)
        if self._stopping:
            self._close_pipe()   # `stop()` may have given up waiting for us
        self._on_exit(error)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        deadline = self._run_engine([])   # what the engine queued before we ran (a seed's hello)
        while not self._stopping:
            wait_s = deadline - time.monotonic()
            timeout_ms = -1 if math.isinf(wait_s) else max(0, math.ceil(wait_s * 1000))
            for fd, _ in poller.poll(timeout_ms):
                if fd == self._wake_r:
                    self._drain_pipe()
            deadline = self._run_engine(self._receive())

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _receive(self) -> list[tuple[bytes, Address]]:
        batch: list[tuple[bytes, Address]] = []
        for _ in range(MAX_BATCH):
            try:
                data, addr = self._sock.recvfrom(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:   # e.g. an ICMP error reported on the socket
                self._drop("udp_error", exc)
                break
            batch.append((data, (addr[0], addr[1])))
        return batch

    def _run_engine(self, batch: list[tuple[bytes, Address]]) -> float:
        """Handle one batch and whatever timer is due; returns the deadline to sleep until.

        One lock hold and, unless a timer ran, one deadline computation per wake-up: an
        idle node's CPU is its wake-ups, and each engine call on one is cache-cold."""
        engine = self._engine
        with self._lock:
            now, now_ms = time.monotonic(), wall_ms()
            for data, addr in batch:
                try:
                    engine.receive_datagram(data, addr, now, now_ms)
                except Exception as exc:  # the engine drops bad input itself; a last guard
                    self._drop("internal", exc)
            deadline = engine.next_deadline()
            if deadline <= now:
                engine.handle_timer(now, now_ms)
                deadline = engine.next_deadline()
            self._wake_at = deadline
            out = engine.datagrams_to_send()
            notify = self._wants_shell()
        self.send(out)
        if notify:
            self._on_output()
        return deadline
