"""The datagram thread's lifecycle: a bounded stop, and a wake pipe that never leaks."""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import pytest

from meshd import pump
from meshd.pump import DatagramPump
from tests.agent.cluster import wait_for

WAIT_S = 5.0


class StallingEngine:
    """Just what the pump calls; `datagrams_to_send` blocks while `stall` is set, as a
    batch stuck behind a starved CPU would."""

    def __init__(self) -> None:
        self.stall = False
        self.release = threading.Event()

    def next_deadline(self) -> float:
        return math.inf

    def receive_datagram(self, *args: object) -> None:
        pass

    def handle_timer(self, *args: object) -> None:
        pass

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        if self.stall:
            self.release.wait(WAIT_S)
        return []


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_thread_that_outlives_stop_closes_the_wake_pipe_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump, "STOP_TIMEOUT_S", 0.05)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    engine = StallingEngine()
    exited = threading.Event()
    datagrams = DatagramPump(sock, engine, threading.RLock(),  # type: ignore[arg-type]
                             wants_shell=lambda: False, on_output=lambda: None,
                             on_exit=lambda error: exited.set(), drop=lambda *args: None)
    pipe = (datagrams._wake_r, datagrams._wake_w)
    try:
        datagrams.start()
        engine.stall = True
        datagrams.stop()                  # gives up waiting: the thread is stuck in a batch
        assert not exited.is_set() and all(map(fd_is_open, pipe))
        datagrams.poke()                  # still safe to call
        engine.release.set()
        assert exited.wait(WAIT_S)
        assert not any(map(fd_is_open, pipe))
        datagrams.poke()                  # after the close: a no-op, not a write to a dead fd
    finally:
        engine.release.set()
        sock.close()


@pytest.mark.parametrize("started", [True, False])
def test_stop_closes_the_wake_pipe(started: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    datagrams = DatagramPump(sock, StallingEngine(), threading.RLock(),  # type: ignore[arg-type]
                             wants_shell=lambda: False, on_output=lambda: None,
                             on_exit=lambda error: None, drop=lambda *args: None)
    pipe = (datagrams._wake_r, datagrams._wake_w)
    try:
        if started:
            datagrams.start()
        datagrams.stop()
        assert not any(map(fd_is_open, pipe))
    finally:
        sock.close()


class FullSocket:
    """A socket whose send buffer never has room."""

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        raise BlockingIOError


def test_a_datagram_refused_for_now_is_counted_dropped_only_on_the_last_try() -> None:
    drops: list[str] = []
    datagrams = DatagramPump(FullSocket(), StallingEngine(), threading.RLock(),  # type: ignore[arg-type]
                             wants_shell=lambda: False, on_output=lambda: None,
                             on_exit=lambda error: None,
                             drop=lambda reason, error: drops.append(reason))
    batch = [(b"left", ("127.0.0.1", 9)), (b"left", ("127.0.0.2", 9))]
    try:
        assert datagrams.send(batch, last_try=False) == batch
        assert drops == []
        assert datagrams.send(batch) == batch
        assert drops == ["send_busy", "send_busy"]
    finally:
        datagrams.stop()


class TimerEngine(StallingEngine):
    """An engine with a settable deadline that counts the thread's wake-ups (one
    `datagrams_to_send` per batch) and its timer runs."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.wakeups = 0
        self.timer_ran = threading.Event()

    def next_deadline(self) -> float:
        return self.deadline

    def handle_timer(self, *args: object) -> None:
        self.deadline = math.inf
        self.timer_ran.set()

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        self.wakeups += 1
        return []


def test_reschedule_wakes_the_thread_only_for_a_sooner_deadline() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    lock = threading.RLock()
    engine = TimerEngine(time.monotonic() + 60)
    datagrams = DatagramPump(sock, engine, lock,  # type: ignore[arg-type]
                             wants_shell=lambda: False, on_output=lambda: None,
                             on_exit=lambda error: None, drop=lambda *args: None)
    try:
        datagrams.start()
        wait_for("the thread to sleep until the deadline",
                 lambda: datagrams._wake_at == engine.deadline, WAIT_S)
        assert engine.wakeups == 1        # the start-up batch
        with lock:
            engine.deadline += 30         # moved later: the thread may sleep on
        datagrams.reschedule()
        time.sleep(0.2)
        assert engine.wakeups == 1 and not engine.timer_ran.is_set()
        with lock:
            engine.deadline = time.monotonic()   # due now
        datagrams.reschedule()
        assert engine.timer_ran.wait(WAIT_S)
        wait_for("the timer's batch", lambda: engine.wakeups == 2, WAIT_S)
    finally:
        datagrams.stop()
        sock.close()

